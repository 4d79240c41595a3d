"""`make flops`: counted FLOPs per method, checked against per-layer formulas on a meta copy of the tiny UNet."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from para.bench import flops
from para.core.subsets import select_modules
from para.run.config import compose_config


@pytest.fixture(scope="module")
def tiny_meta(tiny_pipe_template):
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(tiny_pipe_template.unet.config)
    return unet, dict(tiny_pipe_template.vae.config)


@pytest.fixture(scope="module")
def records(tiny_meta):
    unet, vae = tiny_meta
    return {r["method"]: r for r in flops.measure(["para", "lora", "dreambooth", "frozen"], [64], unet, vae, "tiny")}


def _positions(unet, names) -> dict[str, int]:
    """Output positions (tokens × batch, or pixels × batch) of each named layer in one forward, by hooks."""
    seen = {}
    modules = dict(unet.named_modules())
    handles = [
        modules[n].register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, o.numel() // o.shape[-1 if isinstance(m, torch.nn.Linear) else 1])
        )
        for n in names
    ]
    with torch.no_grad():
        flops._forward(unet, flops.unet_inputs(unet, 64))
    for h in handles:
        h.remove()
    return seen


def test_lora_forward_costs_its_two_thin_products_per_layer(tiny_meta, records):
    """Counted LoRA − base forward = Σ 2·t·r·(n·k² + m): x → A (r outputs), then → B (m outputs), per layer."""
    unet, _ = tiny_meta
    cfg = compose_config("method=lora", "run_dir=x").method
    layers = select_modules(unet, cfg.subset)
    t = _positions(unet, list(layers))
    expected = sum(
        2 * t[n] * cfg.rank * (layer.weight[0].numel() + layer.weight.shape[0]) for n, layer in layers.items()
    )
    assert records["lora"]["sample_forward_flops"] - records["frozen"]["sample_forward_flops"] == expected


def test_records_ratios_and_table1_cell(records):
    para, lora, dreambooth, frozen = (records[m] for m in ("para", "lora", "dreambooth", "frozen"))
    assert para["sample_forward_flops"] == frozen["sample_forward_flops"]  # PaRa samples merged: the base model
    # DreamBooth adds every weight gradient; the floor's backward reaches the latents (conv_in's input gradient),
    # which the adapters' need not, so PaRa and LoRA may count slightly fewer FLOPs than the floor
    assert dreambooth["train_step_flops"] > max(para["train_step_flops"], lora["train_step_flops"])
    assert 0.9 < para["train_ratio_frozen"] < 1.1
    assert lora["train_ratio_lora"] == 1.0 and frozen["train_ratio_frozen"] == 1.0
    assert para["train_ratio_lora"] == pytest.approx(para["train_step_flops"] / lora["train_step_flops"])
    sampling = 100 * (50 * 2 * para["sample_forward_flops"] + para["vae_decode_flops"])
    assert para["cell_flops"] == 200 * para["train_step_flops"] + sampling
    assert lora["cell_flops"] == 1000 * lora["train_step_flops"] + 100 * (
        50 * 2 * lora["sample_forward_flops"] + lora["vae_decode_flops"]
    )
    assert para["tflops_needed_for_10_min"] == pytest.approx(para["cell_flops"] / 600 / 1e12)
    assert "cell_flops" not in frozen


def test_markdown_says_counts_not_timings(records):
    md = flops.to_markdown(list(records.values()))
    assert "**Counts, not timings**" in md and "| para |" in md and "## 64 px" in md
    json.dumps(list(records.values()))  # the results file is plain JSON


@pytest.mark.slow  # make bench's tooling: CI's slow set runs it
def test_cli_writes_json_and_markdown(tmp_path):
    assert flops.main(["--methods", "lora", "frozen", "--resolutions", "64", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "flops.json").read_text())
    assert [(r["model"], r["method"], r["resolution"]) for r in records] == [
        ("sdxl", "lora", 64),
        ("sdxl", "frozen", 64),
    ]
    assert records[0]["trainable_params"] == 17_280_000  # LoRA r16 on SDXL's ExCA layers (make param-table)
    assert "## 64 px" in (tmp_path / "flops.md").read_text()
