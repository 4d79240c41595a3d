"""Parameter counts (PAPER.md §5 item 5): SDXL totals on the meta device, formulas vs what PaRa and peft create."""

from __future__ import annotations

import csv

import pytest
import torch
from diffusers import UNet2DConditionModel

from para.adapter import PaRa, count_para_params
from para.bench.param_count import (
    COLUMNS,
    EXCA_MODULES_SDXL,
    SDXL_TOTAL_PARAMS,
    build_sdxl_unet_meta,
    count,
    lora_params,
    lora_peft_count,
    main,
    total_params,
)
from para.core.subsets import select_modules


def tiny_unet() -> UNet2DConditionModel:
    """An SDXL-shaped UNet (text_time embedding, linear projections, resamplers, conv shortcuts), tiny widths."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids × 8 + pooled text 32
        cross_attention_dim=32,
        norm_num_groups=8,
    )


@pytest.fixture(scope="module")
def sdxl():
    return build_sdxl_unet_meta()


def test_sdxl_meta_total_and_exca(sdxl):
    assert all(p.is_meta for p in sdxl.parameters())
    assert total_params(sdxl) == SDXL_TOTAL_PARAMS == 2_567_463_684
    modules = select_modules(sdxl, "noxattn")
    assert len(modules) == EXCA_MODULES_SDXL == 346
    assert not any("attn2" in name for name in modules)
    assert count(sdxl, "noxattn", "para", 16)["modules"] == 346


def test_sdxl_lora_formula_matches_peft(sdxl):
    expected = count(sdxl, "noxattn", "lora", 16)["trainable_params"]
    assert expected == 17_280_000
    assert lora_peft_count(build_sdxl_unet_meta(), "noxattn", 16) == expected


def test_lora_params_formula():
    assert lora_params(torch.nn.Linear(10, 7), 3) == 3 * (10 + 7)
    assert lora_params(torch.nn.Conv2d(8, 6, 3), 2) == 2 * (8 * 9 + 6)
    assert lora_params(torch.nn.Conv2d(8, 6, (1, 3), groups=2), 2) == 2 * (4 * 3 + 6)


@pytest.mark.parametrize(
    ("subset", "rank", "gamma"), [("noxattn", 3, 1 / 16), ("noxattn", 2, None), ("full", 3, 1 / 16), ("full", 3, None)]
)
def test_para_formula_matches_attached_parameters(subset, rank, gamma):
    unet = tiny_unet()
    expected = count(unet, subset, "para", rank, gamma)
    assert expected["trainable_params"] == count_para_params(select_modules(unet, subset), rank, gamma)
    method = PaRa({"rank": rank, "gamma": gamma, "subset": subset}, "tiny")
    params = method.attach(unet)
    assert len(params) == len(method.ranks) == expected["modules"]
    trainable = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in params) == expected["trainable_params"]
    if gamma is not None:  # the cap bites on the 32-wide layers (⌊32/16⌋ = 2 < 3), not on the 64-wide ones
        assert set(method.ranks.values()) >= {2, 3}


def test_para_count_none_where_attach_refuses():
    unet = tiny_unet()  # conv_out has 4 outputs: PaRa rank 4 cannot remove 4 of 4 directions
    assert count(unet, "full", "para", 4)["trainable_params"] is None
    with pytest.raises(ValueError, match="conv_out"):
        PaRa({"rank": 4, "gamma": None, "subset": "full"}, "tiny").attach(unet)


@pytest.mark.parametrize(("subset", "rank"), [("noxattn", 4), ("full", 3)])
def test_lora_formula_matches_peft(subset, rank):
    unet = tiny_unet()
    modules = select_modules(unet, subset)
    assert any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in modules.values())
    expected = count(unet, subset, "lora", rank)["trainable_params"]
    assert lora_peft_count(unet, subset, rank) == expected


def test_lora_refuses_gamma():
    with pytest.raises(ValueError, match="γ"):
        count(tiny_unet(), "noxattn", "lora", 4, 0.025)


@pytest.mark.slow  # make bench's tooling: CI's slow set runs it
def test_cli_writes_csv_and_md(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--ranks", "4", "16", "--subsets", "noxattn", "attn", "full"]) == 0
    with open(tmp_path / "param_count.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == COLUMNS == ["method", "subset", "rank", "gamma", "modules", "trainable_params"]
    assert len(rows) == 3 * 2 * 3
    by_key = {(r["method"], r["subset"], r["rank"], r["gamma"]): r for r in rows}
    assert by_key[("para", "noxattn", "16", "0.025")]["trainable_params"] == "6120960"
    assert by_key[("para", "noxattn", "16", "")]["trainable_params"] == "6169600"
    assert by_key[("lora", "noxattn", "16", "")] == {
        "method": "lora",
        "subset": "noxattn",
        "rank": "16",
        "gamma": "",
        "modules": "346",
        "trainable_params": "17280000",
    }
    assert by_key[("para", "full", "4", "")]["trainable_params"] == ""  # conv_out has 4 outputs
    assert not any(r["method"] == "lora" and r["gamma"] for r in rows)
    md = (tmp_path / "param_count.md").read_text()
    assert "2,567,463,684" in md and "346" in md
    assert md in capsys.readouterr().out
