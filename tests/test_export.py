"""Exact LoRA exports of PaRa (para/export/) and the public API (para/api.py), through *stock* diffusers.

Oracles: the run's own samples (merged PaRa, made by the harness), diffusers' own LoRA loaders (peft format and
its kohya converter), ComfyUI's LoRA key map (its rule re-written below from comfy/utils.py `unet_to_diffusers`
and comfy/lora.py `model_lora_keys_unet`), and the base weights' bits.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open

import para
from para.combine import CombinedPaRa
from para.core.base_unet import load_unet
from para.core.method import AdapterFileError
from para.core.models import model_id
from para.core.sampling import PromptSpec, generate, read_prompts
from para.core.subsets import select_modules
from para.export import NotExportable, export, low_rank_factors
from para.export.__main__ import main as export_main
from para.export.factors import base_weight_of

LEVEL = 1  # 1/255: a PNG level


def _images(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)).astype(np.int16) for p in sorted(folder.glob("*.png"))}


def _max_diff(a: dict, b: dict) -> int:
    assert a.keys() == b.keys() and a
    return max(int(np.abs(a[k] - b[k]).max()) for k in a)


def _sample(pipe, run_dir: Path, out: Path) -> dict[str, np.ndarray]:
    """The run's evaluation images again (same prompts, seeds and sampler settings) from `pipe`."""
    sc = OmegaConf.load(run_dir / "config.yaml").sample
    specs = [PromptSpec(p["prompt_index"], p["prompt"], p["clean_prompt"]) for p in read_prompts(run_dir / "samples")]
    generate(
        pipe,
        specs,
        out,
        seed=OmegaConf.load(run_dir / "config.yaml").seed,
        images_per_prompt=sc.images_per_prompt,
        steps=sc.steps,
        guidance=sc.guidance,
        resolution=64,
        batch_size=sc.batch_size,
        progress=False,
    )
    return _images(out)


@pytest.fixture(scope="module")
def template(tiny_pipe_template):
    return tiny_pipe_template  # the base model of every run in `export_runs` (random-tiny-seed0)


@pytest.fixture(scope="module")
def runs(export_runs, tmp_path_factory, template):
    """The finished runs, a concat combination of the two PaRa runs, and reference images for each."""
    root = tmp_path_factory.mktemp("export")
    out = dict(export_runs)
    combined = root / "combined"
    sources = [out["para"] / "adapter.safetensors", out["para_cat"] / "adapter.safetensors"]
    CombinedPaRa.from_files(sources, mode="concat", gamma=None).save(None, combined / "adapter.safetensors")
    pipe = copy.deepcopy(template)  # the harness's own merged combination, sampled like the `para` run
    CombinedPaRa.load(pipe.unet, combined / "adapter.safetensors", "random-tiny-seed0").prepare_for_sampling(
        pipe.unet, merge=True
    )
    out["combined"] = combined
    refs = {name: _images(out[name] / "samples") for name in ("para", "para_authors", "lora")}
    refs["combined"] = _sample(pipe, out["para"], root / "combined-samples")
    refs["base"] = _sample(copy.deepcopy(template), out["para"], root / "base-samples")
    for name in ("para", "para_authors", "lora", "combined"):  # the adapters change the images: tests can fail
        assert _max_diff(refs[name], refs["base"]) > 8 * LEVEL, name
    return out, refs, root


@pytest.mark.parametrize(
    ("source", "fmt", "dtype"),
    [
        ("para", "lora", "fp32"),
        ("para", "kohya", "fp16"),
        ("combined", "lora", "fp16"),
        ("combined", "kohya", "fp32"),
        ("para_authors", "kohya", "fp16"),
        ("lora", "kohya", "fp32"),
    ],
)
def test_export_loads_in_stock_diffusers_with_the_runs_images(runs, template, source, fmt, dtype):
    dirs, refs, root = runs
    path = export(dirs[source], root / f"{source}-{fmt}-{dtype}.safetensors", fmt, dtype, pipe=template)
    pipe = copy.deepcopy(template)
    pipe.load_lora_weights(str(path), adapter_name="x")  # stock diffusers (kohya: through its own converter)
    got = _sample(pipe, dirs["para"], root / f"{source}-{fmt}-{dtype}")
    assert _max_diff(got, refs[source]) <= LEVEL
    if source == "para":  # the file's LoRA scale at 0: the base model's images
        pipe.set_adapters(["x"], adapter_weights=[0.0])
        assert _max_diff(_sample(pipe, dirs["para"], root / f"{source}-{fmt}-{dtype}-0"), refs["base"]) <= LEVEL


def _comfy_diffusers_keys(config) -> set[str]:
    """The diffusers weight names ComfyUI maps for a UNet (comfy/utils.py `unet_to_diffusers`, our re-writing)."""
    resnet = ("conv1", "time_emb_proj", "conv2", "conv_shortcut")
    block = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v")
    block += ("attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
    n_blocks, per_block = len(config.block_out_channels), config.layers_per_block
    depth = [
        config.transformer_layers_per_block[x] if "CrossAttn" in t else 0
        for x, t in enumerate(config.down_block_types)
    ]
    keys = set()

    def add(prefix: str, transformers: int) -> None:
        for t in range(transformers):
            keys.update(f"{prefix}.transformer_blocks.{t}.{b}" for b in block)

    for x in range(n_blocks):
        for i in range(per_block):
            keys.update(f"down_blocks.{x}.resnets.{i}.{r}" for r in resnet)
            if depth[x]:
                keys.update(f"down_blocks.{x}.attentions.{i}.{p}" for p in ("proj_in", "proj_out"))
                add(f"down_blocks.{x}.attentions.{i}", depth[x])
        keys.add(f"down_blocks.{x}.downsamplers.0.conv")
    keys.update(f"mid_block.attentions.0.{p}" for p in ("proj_in", "proj_out"))
    add("mid_block.attentions.0", config.transformer_layers_per_block[-1])
    keys.update(f"mid_block.resnets.{i}.{r}" for i in (0, 1) for r in resnet)
    for x in range(n_blocks):
        up_depth = depth[n_blocks - 1 - x]
        for i in range(per_block + 1):
            keys.update(f"up_blocks.{x}.resnets.{i}.{r}" for r in resnet)
            if up_depth:
                keys.update(f"up_blocks.{x}.attentions.{i}.{p}" for p in ("proj_in", "proj_out"))
                add(f"up_blocks.{x}.attentions.{i}", up_depth)
        keys.add(f"up_blocks.{x}.upsamplers.0.conv")
    return keys


def test_kohya_keys_are_those_of_comfyuis_key_map(runs, template):
    dirs, _, root = runs
    path = export(dirs["para"], root / "keys.safetensors", "kohya", pipe=template)
    # comfy/lora.py model_lora_keys_unet: "lora_unet_" + the diffusers key without ".weight", dots as underscores
    comfy = {"lora_unet_" + k.replace(".", "_"): k for k in _comfy_diffusers_keys(template.unet.config)}
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    names = {k.split(".", 1)[0] for k in tensors}
    assert names <= comfy.keys(), sorted(names - comfy.keys())[:3]
    adapted = select_modules(template.unet, "noxattn")
    assert {comfy[n] for n in names} == set(adapted)  # every ExCA layer, convs included, and nothing else
    for name in names:
        module = adapted[comfy[name]]
        down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
        rank = down.shape[0]
        assert float(tensors[f"{name}.alpha"]) == rank  # alpha = rank: scale 1
        if module.weight.ndim == 4:  # kohya's conv LoRA: a k×k down-conv with r outputs, then a 1×1 up-conv
            assert down.shape == (rank, *module.weight.shape[1:]) and up.shape == (module.weight.shape[0], rank, 1, 1)
        else:
            assert down.shape == (rank, module.weight.shape[1]) and up.shape == (module.weight.shape[0], rank)
    assert any(adapted[comfy[n]].weight.shape[-1] == 3 for n in names)  # 3×3 convs are in the file


def _explicit_merged(w0: torch.Tensor, bases: list[torch.Tensor], mode: str) -> torch.Tensor:
    """The combined layer's weight with explicit m × m projectors in float64 (PAPER.md §5.2's formulas)."""
    eye = torch.eye(w0.shape[0], dtype=torch.float64)
    projectors = [q.double() @ q.double().T for q in bases]
    if mode == "additive":
        return (eye - sum(projectors)) @ w0
    for p in projectors:  # concat: one basis (the stored union of both); sequential: one after the other
        w0 = (eye - p) @ w0
    return w0


def test_factors_are_exact_for_every_combination_mode(runs, template):
    dirs, _, _ = runs
    sources = [dirs["para"] / "adapter.safetensors", dirs["para_cat"] / "adapter.safetensors"]
    for mode in ("concat", "sequential", "additive"):
        combined = CombinedPaRa.from_files(sources, mode=mode, gamma=None)
        factors = low_rank_factors(combined.state_dict(), combined.metadata(), base_weight_of(template.unet))
        assert factors.keys() == combined.bases.keys()
        for name, bases in combined.bases.items():
            w0 = template.unet.get_submodule(name).weight.double()
            expected = _explicit_merged(w0.reshape(w0.shape[0], -1), bases, mode).reshape(w0.shape)
            torch.testing.assert_close(w0 + factors[name].delta().double(), expected, rtol=0, atol=2e-6)
            assert factors[name].rank == sum(q.shape[1] for q in bases) <= 3 + 2  # rank ≤ r1 + r2


def test_metadata_names_what_was_exported(runs):
    dirs, _, root = runs
    out = root / "cli.safetensors"
    assert export_main([str(dirs["para"]), "--format", "kohya", "--out", str(out)]) == 0
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["method"] == "para" and meta["base_model"] == "random-tiny-seed0"
    assert meta["exact"] == "exported from PaRa (exact: W − W0 = −Q QᵀW0, Q = qr(B))"
    assert (meta["subject"], meta["token"], meta["instance_prompt"]) == ("dog", "sks", "a photo of sks dog")
    assert json.loads(meta["gamma"]) == 0.025 and json.loads(meta["subset"]) == "noxattn"
    ranks = json.loads(meta["ranks"])
    assert ranks["down_blocks.0.resnets.0.conv1"] == 1 and ranks["mid_block.resnets.0.conv1"] == 3  # ⌊γ·d_out⌋


def test_export_never_replaces_a_file_unasked_and_refuses_non_low_rank_methods(runs, tmp_path, template, capsys):
    dirs, _, _ = runs
    out = tmp_path / "mine.safetensors"
    out.write_bytes(b"the user's file")
    assert export_main([str(dirs["para"]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"the user's file"
    assert export(dirs["para"], out, "lora", overwrite=True, pipe=template) == out
    source = dirs["para"] / "adapter.safetensors"
    with pytest.raises(FileExistsError, match="being exported"):
        export(dirs["para"], source, "lora", overwrite=True)
    from baselines.svdiff import SVDiff

    cfg = compose_config("model=tiny", "method=svdiff", "run_dir=unused")
    unet = copy.deepcopy(template.unet)
    svdiff = SVDiff(cfg.method, model_id(cfg.model))
    svdiff.attach(unet)
    path = svdiff.save(unet, tmp_path / "svdiff.safetensors")
    with pytest.raises(NotExportable, match="singular value"):
        export(path, tmp_path / "x.safetensors", pipe=template)
    with pytest.raises(NotExportable, match="singular value"):
        para.load_adapter(copy.deepcopy(template), path)


def _snapshot(unet):
    return [type(m) for m in unet.modules()], {k: v.clone() for k, v in unet.state_dict().items()}


@pytest.mark.parametrize("source", ["para", "combined", "para_authors", "lora", "para-kohya-file"])
def test_load_adapter_applies_the_adapter_and_remove_restores_every_bit(runs, template, source):
    dirs, refs, root = runs
    reference = source.removesuffix("-kohya-file")
    path = dirs[reference] / "adapter.safetensors"
    if source.endswith("kohya-file"):  # an exported file loads the same way
        path = export(dirs[reference], root / "api-kohya.safetensors", "kohya", "fp32", pipe=template)
    pipe = copy.deepcopy(template)
    types, weights = _snapshot(pipe.unet)
    handle = para.load_adapter(pipe, path)
    # the run's own images (our LoRA at the scale its run sampled with, 2.2)
    assert _max_diff(_sample(pipe, dirs["para"], root / f"api-{source}"), refs[reference]) <= LEVEL
    handle.remove()
    types_after, weights_after = _snapshot(pipe.unet)
    assert types_after == types and weights_after.keys() == weights.keys()
    assert all(torch.equal(weights[k], weights_after[k]) for k in weights)


def test_load_adapter_refuses_another_base_model_naming_both(runs, template):
    dirs, _, _ = runs
    other = copy.deepcopy(template)
    other.register_to_config(_name_or_path="random-tiny-seed1")  # what build_random_pipeline("tiny", 1) is named
    with pytest.raises(AdapterFileError, match=r"random-tiny-seed0.*random-tiny-seed1"):
        para.load_adapter(other, dirs["para"] / "adapter.safetensors")
    assert not other.get_list_adapters()
    with pytest.raises(AdapterFileError, match="random-tiny-seed0.*sdxl"):
        para.load_adapter(other, dirs["para"] / "adapter.safetensors", base_model="sdxl")


def test_import_para_is_light_and_exposes_the_api_lazily():
    code = "import sys, para; assert 'torch' not in sys.modules and 'para.api' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
    from para import api

    assert para.load_adapter is api.load_adapter and para.export_lora is api.export_lora
    with pytest.raises(AttributeError):
        para.no_such_thing  # noqa: B018


def test_counted_sizes_are_those_of_real_files(runs, template):
    """make export-sizes counts bytes with zero-filled stand-ins of the tensors: the size of the real file."""
    from para.bench.export_size import serialized_size

    dirs, _, root = runs
    for fmt in ("lora", "kohya"):
        path = export(dirs["para"], root / f"size-{fmt}.safetensors", fmt, pipe=template)
        with safe_open(str(path), framework="pt") as f:
            meta_tensors = {k: f.get_tensor(k).to("meta") for k in f.keys()}  # noqa: SIM118
            metadata = f.metadata()
        assert serialized_size(meta_tensors, metadata) == path.stat().st_size


@pytest.mark.slow
def test_export_sizes_at_sdxl_scale(tmp_path):
    from para.bench.export_size import main

    assert main(["--out", str(tmp_path), "--dtypes", "fp16"]) == 0
    sizes = {(r["source"], r["format"]): r["bytes"] for r in json.loads((tmp_path / "export_size.json").read_text())}
    assert 6_120_960 * 4 < sizes[("para r16", "adapter.safetensors (native)")] < 6_120_960 * 4 + 200_000
    assert 17_280_000 * 2 < sizes[("lora r16", "lora")] < 17_280_000 * 2 + 200_000
    ranks = pd.read_csv(tmp_path / "export_ranks.csv")
    assert len(ranks) == 346 and set(ranks["rank lora r16"]) == {16}
    assert (ranks["rank para r16"] == ranks["d_out"].map({320: 8, 640: 16, 1280: 16})).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_load_adapter_on_a_half_precision_pipeline(runs, template, dtype):
    """SDXL runs in bf16/fp16: the adapter applies in that dtype (to its rounding) and comes off bit-exactly."""
    from para.adapter import PaRa, unwrap_merged

    dirs, _, _ = runs
    g = torch.Generator().manual_seed(0)
    x, emb = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 96, generator=g)
    added = {"text_embeds": torch.randn(1, 64, generator=g), "time_ids": torch.ones(1, 6) * 64}

    def out(unet):
        kw = {k: v.to(dtype) for k, v in added.items()}
        with torch.no_grad():
            return unet(x.to(dtype), 300, encoder_hidden_states=emb.to(dtype), added_cond_kwargs=kw).sample.float()

    merged = copy.deepcopy(template.unet)  # the harness's PaRa merged in float32, then cast like the base weights
    method = PaRa(OmegaConf.load(dirs["para"] / "config.yaml").method, "random-tiny-seed0")
    method.attach(merged)
    method.load_file(merged, dirs["para"] / "adapter.safetensors")
    pipe = copy.deepcopy(template)
    pipe.unet.to(dtype)
    expected, base = out(unwrap_merged(merged).to(dtype)), out(pipe.unet)
    types, weights = _snapshot(pipe.unet)
    handle = para.load_adapter(pipe, dirs["para"] / "adapter.safetensors")
    assert (out(pipe.unet) - expected).abs().max() < 0.1 * (expected - base).abs().max()
    handle.remove()
    assert _snapshot(pipe.unet)[0] == types
    assert all(torch.equal(weights[k], v) for k, v in _snapshot(pipe.unet)[1].items())


def test_export_builds_the_unet_alone_in_the_dtype_the_run_trained_in(export_runs, tmp_path, monkeypatch):
    """W0 is all an export reads (issue 25 item 7): no text encoder and no VAE is built (on SDXL the whole pipeline
    was ~14 GB in fp32 on the CPU), and the UNet comes in the run's dtype (bf16 for a run that trained on a GPU),
    except for `merged`, which writes every weight: rounded once, from float32."""
    import shutil

    from diffusers import AutoencoderKL
    from safetensors.torch import load_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from para.export import convert

    reference = load_file(export(export_runs["para"], tmp_path / "reference.safetensors"))

    def not_needed(*_args, **_kwargs):
        raise AssertionError("the export built a text encoder or the VAE")

    for cls in (CLIPTextModel, CLIPTextModelWithProjection, AutoencoderKL):
        monkeypatch.setattr(cls, "__init__", not_needed)
    again = load_file(export(export_runs["para"], tmp_path / "again.safetensors"))
    assert again.keys() == reference.keys() and all(torch.equal(again[k], reference[k]) for k in again)

    gpu_run = tmp_path / "gpu-run"  # the same run, as if it had trained on a card
    shutil.copytree(export_runs["para"], gpu_run)
    metrics = json.loads((gpu_run / "metrics.json").read_text())
    metrics["meta_info"]["device"] = "cuda:0"
    (gpu_run / "metrics.json").write_text(json.dumps(metrics))
    loaded = []
    monkeypatch.setattr(convert, "load_unet", lambda m, d, dtype: loaded.append(dtype) or load_unet(m, d, dtype))
    export(gpu_run, tmp_path / "gpu.safetensors")
    export(gpu_run, tmp_path / "merged", fmt="merged", dtype="fp16")
    assert loaded == [torch.bfloat16, torch.float32]
