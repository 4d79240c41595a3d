"""`make bench` plumbing on the tiny model: records, ratios, memory meter, SDXL builder pieces. No timing asserts."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from para.bench import compare as bench
from para.bench import peer as bench_peer
from para.bench.report import TARGETS, add_ratios, table1_estimate, targets, to_markdown
from para.core.memory import PeakMemory

REQUIRED = {
    "method",
    "model",
    "resolution",
    "device",
    "dtype",
    "step_seconds",
    "peak_memory_mb",
    "trainable_params",
    "provenance",
}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "--models",
        "tiny",
        "--methods",
        "para",
        "lora",
        "frozen",
        "--resolution",
        "32",
        "--steps",
        "2",
        "--rounds",
        "1",
        "--warmup",
        "1",
        "--sample-steps",
        "1",
        "--sample-repeats",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    threads = torch.get_num_threads()
    try:  # one thread: tiny ops on a shared machine are far steadier without OpenMP's spinning workers
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow  # make bench's tooling: CI's slow set runs it
def test_bench_writes_records_with_required_keys(bench_run):
    out, records = bench_run
    assert [(r["method"], r["cache_latents"]) for r in records] == [
        ("para", True),
        ("lora", True),
        ("frozen", True),
        ("para", False),
    ]
    for r in records:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert (r["model"], r["resolution"], r["device"], r["dtype"], r["weights"]) == (
            "tiny",
            32,
            "cpu",
            "float32",
            "random",
        )
        assert len(r["step_seconds_all"]) == 2 and r["step_seconds"] > 0 and len(r["peak_increase_mb_all"]) <= 1
        assert r["provenance"]["packages"]["torch"] and "git_sha" in r["provenance"]
    by = {r["method"]: r for r in records if r["cache_latents"]}
    assert by["frozen"]["trainable_params"] == 0 and by["frozen"]["adapter_file_bytes"] is None
    # PaRa trains m·r per layer, LoRA r·(n·k² + m) on the same layers: fewer parameters, a smaller file.
    assert 0 < by["para"]["trainable_params"] < by["lora"]["trainable_params"]
    assert 0 < by["para"]["adapter_file_bytes"] < by["lora"]["adapter_file_bytes"]
    assert by["para"]["sample_merged_seconds_per_image"] is not None  # PaRa merges
    assert by["lora"]["sample_merged_seconds_per_image"] is None and by["lora"]["sample_seconds_per_image"] > 0
    assert by["para"]["step_ratio_lora"] == pytest.approx(by["para"]["step_seconds"] / by["lora"]["step_seconds"])
    uncached = records[-1]
    assert uncached["cache_saving_seconds"] == pytest.approx(uncached["step_seconds"] - by["para"]["step_seconds"])
    md = (out / "results.md").read_text()
    assert "RANDOM weights" in md and "## tiny, 32 px" in md and "Targets" in md
    assert "1 rounds, attention AttnProcessor2_0" in md


@pytest.mark.slow  # make bench's tooling: CI's slow set runs it
def test_peak_memory_per_method_is_measured_on_linux(bench_run):
    _, records = bench_run
    if records[0]["peak_memory_mb"] is None:
        pytest.skip("no /proc/self/clear_refs here: per-region peak RSS is not available")
    by = {r["method"]: r for r in records if r["cache_latents"]}
    assert all(r["peak_increase_mb"] >= 0 and r["peak_memory_mb"] > r["peak_increase_mb"] for r in by.values())


@pytest.mark.slow  # make bench's tooling: CI's slow set runs it
def test_rebuild_mode_measures_every_round(tmp_path):
    """The GPU mode (a fresh copy per variant and round), exercised on CPU."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        records = bench.benchmark(
            ["tiny"],
            ["para", "frozen"],
            bench.Settings(steps=1, rounds=2, warmup=1, keep=False, sample_images=0, cache_method=None),
            resolutions=[32],
        )
    finally:
        torch.set_num_threads(threads)
    for r in records:
        assert len(r["step_seconds_all"]) == 2 and r["sample_seconds_per_image"] is None
        assert len(r["peak_increase_mb_all"]) in (0, 2)  # 0 where the platform has no per-region peak


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory(torch.device("cpu")) as m:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    if m.increase_mb is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert m.increase_mb > 48


def _record(method, step, memory=1000.0, increase=100.0, sample=None, merged=None, cache=True, **extra):
    return {
        "method": method,
        "model": "small",
        "resolution": 128,
        "device": "cpu",
        "cache_latents": cache,
        "step_seconds": step,
        "step_cpu_seconds": step,
        "peak_memory_mb": memory,
        "peak_increase_mb": increase,
        "sample_seconds_per_image": sample,
        "sample_merged_seconds_per_image": merged,
        **extra,
    }


def test_ratios_from_records():
    records = [
        _record("para", 1.05, 990, 90, sample=2.2, merged=2.03),
        _record("lora", 1.0, 1000, 100, sample=2.1),
        _record("frozen", 0.5, 950, 50, sample=2.0),
        _record("para", 1.5, cache=False),
        {**_record("para", 9.0), "model": "tiny"},
    ]  # another group: no LoRA there
    out = add_ratios(records)
    para, lora, frozen, uncached, tiny = out
    assert para["step_ratio_lora"] == pytest.approx(1.05) and para["step_ratio_frozen"] == pytest.approx(2.1)
    assert para["memory_ratio_lora"] == pytest.approx(0.99)
    assert para["memory_increase_ratio_lora"] == pytest.approx(0.9)
    assert para["sample_merged_ratio_base"] == pytest.approx(1.015)  # merged PaRa vs the base model's sampling
    assert lora["step_ratio_lora"] == 1.0 and frozen["step_ratio_frozen"] == 1.0
    assert lora["sample_merged_ratio_base"] is None
    assert uncached["cache_saving_seconds"] == pytest.approx(0.45) and "step_ratio_lora" not in uncached
    assert tiny["step_ratio_lora"] is None
    assert records[0].get("step_ratio_lora") is None  # inputs untouched
    met = {(t["target"], t["model"]): t["met"] for t in targets(out)}
    step, memory, merged = TARGETS[0][0], TARGETS[2][0], TARGETS[4][0]  # wall-clock step, peak memory, sampling
    assert met[(step, "small")] is True and met[(memory, "small")] is True and met[(merged, "small")] is True
    assert met[(step, "tiny")] is None
    slower = add_ratios(
        [_record("para", 1.06, sample=1.0, merged=0.97), _record("lora", 1.0), _record("frozen", 0.5, sample=1.0)]
    )
    met = {t["target"]: t["met"] for t in targets(slower)}
    assert met[step] is False and met[merged] is False  # 3 % faster is not "within 2 %" either
    assert "| para |" in to_markdown(out)


def test_compiled_records_compare_with_compiled_references_and_with_eager():
    records = [
        _record("para", 1.0, first_warmup_seconds=3.0),
        _record("lora", 1.1),
        _record("para", 0.8, compile=True, first_warmup_seconds=70.0, warmup_steps=2),
        _record("lora", 0.9, compile=True),
    ]
    para, lora, para_c, lora_c = add_ratios(records)
    assert para["step_ratio_lora"] == pytest.approx(1.0 / 1.1) and "compile_speedup" not in para
    assert para_c["step_ratio_lora"] == pytest.approx(0.8 / 0.9)  # compiled vs compiled
    assert para_c["compile_speedup"] == pytest.approx(1.25) and lora_c["compile_speedup"] == pytest.approx(1.1 / 0.9)
    assert [t["value"] for t in targets(add_ratios(records)) if t["target"] == TARGETS[0][0]] == [
        pytest.approx(1.0 / 1.1)
    ]  # the targets read the eager records only
    md = to_markdown(add_ratios(records))
    assert "| para (compiled) |" in md and "torch.compile (para, inductor): 0.8 s/step compiled, 1.25× faster" in md
    assert "first 2 warm-up steps, compiling included, took 70 s (eager: 3 s)" in md


def test_table1_estimate_from_sdxl_records():
    gpu = {"model": "sdxl", "resolution": 1024, "device": "cuda:0"}
    sdxl = [
        {**_record("para", 1.5, sample=0.2, merged=0.3), **gpu, "sample_steps": 5},
        {**_record("frozen", 1.0, sample=0.2), **gpu, "sample_steps": 5},
        {**_record("dreambooth", 2.0), **gpu},
    ]
    rows = {e["method"]: e for e in table1_estimate(sdxl)}
    # PaRa: 200 steps × 1.5 s + 100 images × 0.3 s × 50/5 steps = 600 s = 10 min; DreamBooth samples like the base.
    assert rows["para"]["cell_minutes"] == pytest.approx(10.0) and rows["para"]["sampling_measured"]
    assert rows["dreambooth"]["cell_minutes"] == pytest.approx((1000 * 2.0 + 100 * 0.2 * 10) / 60)
    assert not rows["dreambooth"]["sampling_measured"] and "frozen" not in rows
    assert rows["para"]["table_gpu_hours"] == pytest.approx(600 * 30 / 3600)
    cell = [t for t in targets(add_ratios(sdxl)) if t["target"].startswith("Table 1")]
    assert len(cell) == 1 and cell[0]["met"] is True
    assert table1_estimate([_record("para", 1.0)]) == []  # CPU models: no estimate
    assert table1_estimate([{**sdxl[0], "device": "cpu"}]) == []  # nor SDXL's UNet measured on a CPU
    assert "Table 1 estimate" in to_markdown(add_ratios(sdxl))


def test_variants_and_unknown_methods():
    assert bench.variants_of(["para", "lora"], "para")[-1] == bench.Variant("para", cache_latents=False)
    with pytest.raises(ValueError, match="unknown bench methods"):
        bench.variants_of(["para", "loar"], None)
    with pytest.raises(ValueError, match="cache-method"):
        bench.variants_of(["lora"], "para")
    assert bench.variants_of(["para", "lora"], None, ["lora"]) == [
        bench.Variant("para"),
        bench.Variant("lora"),
        bench.Variant("lora", compile=True),
    ]
    with pytest.raises(ValueError, match="compile-methods"):
        bench.variants_of(["lora"], None, ["para"])
    with pytest.raises(ValueError, match="unknown model"):
        bench.model_plan("sdxl_", bench.Settings(device="cpu"), [], None)


def test_sdxl_on_a_cpu_runs_the_para_lora_comparison_at_256px():
    """`make bench` without a GPU measures SDXL's real-size UNet at 256 px: PaRa (one QR per layer and batched)
    and LoRA, two rounds of one step, bf16 autocast, no sampling, one UNet copy at a time."""
    variants = bench.variants_of(["para", "para_qr_per_layer", "lora", "dreambooth", "frozen"], "para")
    sizes, chosen, settings = bench.model_plan("sdxl", bench.Settings(device="cpu"), variants, None)
    assert sizes == (256,) and [v.method for v in chosen] == ["para", "para_qr_per_layer", "lora"]
    assert (settings.rounds, settings.steps, settings.sample_images, settings.keep) == (2, 1, 0, False)
    assert settings.mixed_precision == "bf16"


def test_materialize_meta_unet_gives_finite_outputs():
    from diffusers import UNet2DConditionModel

    from para.bench.sdxl import materialize
    from para.core.models import build_random_pipeline

    pipe = build_random_pipeline("tiny")
    with torch.device("meta"):
        meta = UNet2DConditionModel.from_config(pipe.unet.config)
    unet = materialize(meta, "cpu", torch.bfloat16)
    assert unet.dtype == torch.bfloat16 and not any(p.is_meta for p in unet.parameters())
    assert sum(p.numel() for p in unet.parameters()) == sum(p.numel() for p in pipe.unet.parameters())
    with pytest.raises(ValueError, match="buffers"):
        materialize(nn.BatchNorm1d(4, device="meta"), "cpu", torch.float32)


def test_sdxl_pipeline_builder_on_tiny_components():
    """The GPU-only SDXL path, with the tiny model's shapes: random materialized UNet, text encoders, VAE."""
    from diffusers import UNet2DConditionModel

    from para.bench.sdxl import build_sdxl_random_pipeline
    from para.core.conditioning import encode_prompt
    from para.core.models import RANDOM_SHAPES, build_random_pipeline

    config = build_random_pipeline("tiny").unet.config
    with torch.device("meta"):
        meta = UNet2DConditionModel.from_config(config)
    text = [
        dict(
            hidden_size=h,
            intermediate_size=2 * h,
            num_attention_heads=4,
            num_hidden_layers=1,
            projection_dim=h,
            hidden_act="gelu",
        )
        for h in RANDOM_SHAPES["tiny"]["text"]
    ]
    vae = dict(
        block_out_channels=[16, 32],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    )
    pipe = build_sdxl_random_pipeline("cpu", torch.float32, unet=meta, text_encoders=tuple(text), vae=vae)
    cond = encode_prompt(pipe, "a photo of sks dog", 64)
    with torch.no_grad():
        out = pipe.unet(
            torch.randn(1, 4, 8, 8),
            torch.tensor([10]),
            encoder_hidden_states=cond.prompt_embeds,
            added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": cond.time_ids},
        ).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
    assert not any(p.requires_grad for p in pipe.unet.parameters())


def test_peer_rate_parsing_and_tqdm_ema():
    from tqdm.std import EMA

    steps = [1.0, 0.5, 0.4, 0.45, 0.5]
    ema = EMA(bench_peer.TQDM_SMOOTHING)
    for dt in steps:
        last = ema(dt)
    assert bench_peer.tqdm_rate(steps) == pytest.approx(1 / last)
    log = (
        "Steps:   0%|   | 0/3 [00:00<?, ?it/s]\rSteps:  33%|█  | 1/3 [00:02<00:04,  2.10s/it, loss=1]\r"
        "Steps: 100%|███| 3/3 [00:05<00:00,  1.60it/s, loss=1]\nsaving…\r"
        "Steps: 100%|███| 3/3 [00:09<00:00, 0.33it/s]"
    )
    assert bench_peer.last_tqdm_rate(log) == (3, 1.6)
    assert bench_peer.last_tqdm_rate("no bar here") is None


def test_every_unet_attends_through_torch_sdpa():
    """diffusers' AttnProcessor2_0 calls F.scaled_dot_product_attention, which picks flash / memory-efficient
    kernels on CUDA by itself; no model we build falls back to the slow explicit-softmax processor."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from para.bench.param_count import build_sdxl_unet_meta
    from para.core.models import build_random_pipeline

    for unet in (build_random_pipeline("tiny").unet, build_sdxl_unet_meta()):
        processors = unet.attn_processors
        assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())
    assert bench.attention_kernels(build_random_pipeline("tiny").unet) == {"processors": ["AttnProcessor2_0"]}
