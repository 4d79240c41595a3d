"""`make bench`: what PaRa, LoRA and DreamBooth cost to train and to sample, measured side by side.

    python -m para.bench [--models tiny small] [--methods para lora lora_attn dreambooth frozen]
                         [--resolution 128] [--steps 1] [--rounds 6] [--threads N] [--out runs/bench]

writes `results.json` (one record per method × model × resolution, with provenance) and `results.md`.

How it measures (all in one process, through the project's own code path):
- Every variant gets its own deep copy of the same base UNet, attached through `para.run.registry.METHODS`
  (composed from `conf/` exactly as `run.py` would), and its own `para.core.trainer.Trainer`; it first trains
  `warmup` untimed steps (optimizer state, first-touch allocations).
- Rounds are round-robin: each trains `steps` steps of every variant in turn with `Trainer.train` (the start
  rotates), so machine noise hits all alike; `step_seconds` is the median of all timed steps, wall clock, and
  `step_cpu_seconds` the same in CPU seconds of the process (CPU only).
- `lora_attn` is LoRA on the attention projections q/k/v/out (diffusers' default target); `para_qr_per_layer` is
  PaRa with one QR per layer (`method.batch_qr=false`, before para.batched_qr); `frozen` is the floor: the same
  loss, forward and backward through the frozen UNet to the (grad-requiring) input latents, nothing to train.
- Operators per training step (`para.bench.dispatches.DispatchCount`: each is at least one kernel launch on a
  GPU), all and QRs, counted in one extra untimed step after the warm-up.
- Peak memory while attaching and warming up: see `para.core.memory` (CPU: VmHWM, reset per variant; CUDA:
  max allocated). `peak_memory_mb` = memory held by the pipeline alone (as a real run holds it) + the
  increase, so the benchmark's extra UNet copy is not counted; `peak_increase_mb` is the increase alone.
- Sampling: each round, `para.core.sampling.generate` (the eval protocol's DDIM sampler and seeds) with the adapter
  unmerged, and merged where the method merges (PaRa); `frozen` samples the base model.
- Caching: one extra variant trains the `--cache-method` with `train.cache_latents=false` (VAE and text
  encoders run every step).
On CUDA every round rebuilds each variant (a kept copy per variant would not fit next to DreamBooth on SDXL).
Models are SDXL-shaped with RANDOM weights (tiny, small; real-size SDXL on a GPU): speed and memory only.
"""

# ruff: noqa: E402 (OMP_WAIT_POLICY must be set before torch is imported, see below)
from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os

# Other processes on the same cores make OpenMP's spin-waiting threads stall each other (a tiny UNet step went
# from 0.05 s to 1-10 s on a loaded 2-core machine); sleeping waits cost a little on an idle machine and keep
# the numbers usable on a busy one. Read by the OpenMP runtime when torch loads, so set before importing it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from omegaconf import DictConfig, OmegaConf
from torch import nn

from para.bench.dispatches import DispatchCount
from para.bench.parts import (
    PROMPT,
    VARIANTS,
    Contestant,
    Frozen,
    GradLatents,
    Settings,
    Tally,
    Variant,
    quiet_gc,
    variant_method,
    variant_overrides,
    with_unet,
)
from para.bench.report import add_ratios, to_markdown
from para.core.conditioning import SubjectLatents
from para.core.io import atomic_write_text, write_results
from para.core.memory import PeakMemory, current_mb, release_memory
from para.core.method import Method
from para.core.models import load_pipeline
from para.core.provenance import provenance
from para.core.sampling import generate
from para.core.trainer import Trainer
from para.run.config import compose_config

log = logging.getLogger(__name__)

# 128 px keeps `small` (SDXL's 320/640 widths) to a few seconds per step on 2 CPU cores.
RESOLUTIONS = {"tiny": (64,), "small": (128,), "sdxl": (512, 1024)}
# SDXL's real-size UNet on a CPU (~7 s per step at 512 px): at 256 px, bf16 autocast, the PaRa/LoRA comparison
# only (one QR per layer vs batched), two rounds of one step, no sampling. DreamBooth would need > 41 GB of RAM.
SDXL_CPU = dict(resolution=256, methods=("para", "para_qr_per_layer", "lora"), rounds=2, warmup=1, steps=1)
NUM_PHOTOS = 4  # synthetic photos: step cost does not depend on pixel content
# Record keys reported as the median over all segments (and over the steps or images within them). Peak memory
# too: the first segment of a method can pay one-time, process-wide costs (MKL/oneDNN workspaces) that are not
# the method's.
MEDIANS = (
    "step_seconds",
    "step_cpu_seconds",
    "sample_seconds_per_image",
    "sample_cpu_seconds_per_image",
    "sample_merged_seconds_per_image",
    "sample_merged_cpu_seconds_per_image",
    "peak_memory_mb",
    "peak_increase_mb",
    "warmup_seconds",
)


class ModelBench:
    """The shared state of one (model, resolution): base pipeline, cached and uncached latents, configs."""

    def __init__(self, model: str, resolution: int, settings: Settings, pipe: StableDiffusionXLPipeline | None = None):
        self.model, self.resolution, self.settings = model, resolution, settings
        base = [
            f"model={model}",
            f"model.resolution={resolution}",
            f"seed={settings.seed}",
            f"device={settings.device}",
            f"train.batch_size={settings.batch_size}",
            f"train.mixed_precision={settings.mixed_precision}",
            "logger=none",
            "run_dir=unused",
        ]
        self.base_overrides = base
        cfg = compose_config(*base)
        self.pipe = pipe if pipe is not None else load_pipeline(cfg.model, torch.device(_device(settings.device)))
        self.device = self.pipe.unet.device
        pixels = torch.rand(NUM_PHOTOS, 3, resolution, resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.latents = {
            True: SubjectLatents(self.pipe, pixels, 0.5, cache=True),
            False: SubjectLatents(self.pipe, pixels, 0.5, cache=False),
        }
        self.sample_cfg = cfg.sample
        release_memory(self.device)
        self.base_mb = current_mb(self.device)  # the pipeline as a real run holds it, before any benchmark copy

    def config(self, variant: Variant) -> DictConfig:
        cache = str(variant.cache_latents).lower()
        return compose_config(
            *self.base_overrides,
            *variant_overrides(variant.method),
            f"steps={self.settings.steps}",
            f"train.cache_latents={cache}",
            f"train.compile={str(variant.compile).lower()}",
        )

    def build(self, variant: Variant, tally: Tally | None) -> Contestant:
        """Copy the base UNet, attach, build the trainer, train the warm-up steps; measure memory into `tally`."""
        cfg = self.config(variant)
        method = variant_method(variant.method, cfg.method, "bench")
        trains = not isinstance(method, Frozen)
        unet = copy.deepcopy(self.pipe.unet)
        pipe = with_unet(self.pipe, unet)
        with PeakMemory(self.device) as memory:
            params = method.attach(unet)
            # AdamW refuses an empty list; the floor's placeholder never gets a gradient, so it never updates.
            placeholder = [nn.Parameter(torch.zeros((), device=self.device))]
            # the peak of the whole region (attach included, e.g. DreamBooth's fp32 upcast) is what PeakMemory reads
            trainer = Trainer(pipe, method, params or placeholder, cfg, reset_peak_memory=False)
            latents = self.latents[variant.cache_latents]
            contestant = Contestant(variant, method, unet, pipe, trainer, latents if trains else GradLatents(latents))
            t0 = time.perf_counter()
            contestant.train(self.settings.warmup, self.resolution)
            contestant.warmup_seconds = time.perf_counter() - t0
        if tally is None:
            return contestant
        if memory.increase_mb is not None and self.base_mb is not None:
            tally.add("peak_increase_mb", memory.increase_mb)
            tally.add("peak_memory_mb", self.base_mb + memory.increase_mb)
        tally.add("warmup_seconds", contestant.warmup_seconds)
        if not tally.facts:
            tally.facts.update(
                trainable_params=sum(p.numel() for p in params),
                dtype=str(unet.dtype).removeprefix("torch."),
                amp_dtype=str(trainer.amp_dtype).removeprefix("torch.") if trainer.amp_dtype else None,
                adapter_file_bytes=self._file_size(method, unet) if trains else None,
                method_config=OmegaConf.to_container(cfg.method) if trains else None,
            )
            with DispatchCount() as count:  # one more step, untimed: the mode's Python call per operator is slow
                contestant.train(1, self.resolution)
            tally.facts.update(dispatches_per_step=count.total, qr_per_step=count.matching("linalg_qr"))
        return contestant

    def measure(self, contestant: Contestant, tally: Tally, round_index: int = 0) -> None:
        """One round of a contestant: `steps` timed training steps, then sampling (unmerged and merged, in an
        order that alternates between rounds, `sample_repeats` times each)."""
        wall, cpu = contestant.train(self.settings.steps, self.resolution)
        tally.add("step_seconds", *wall)
        if self.device.type == "cpu":  # on a GPU, CPU time only measures the launch overhead
            tally.add("step_cpu_seconds", *cpu)
        variant = contestant.variant
        samples = variant.cache_latents and not variant.compile  # compiled: training only (sampling recompiles)
        if self.settings.sample_images and samples and variant.method in self.settings.sample_methods:
            states = [(False, "sample"), (True, "sample_merged")]
            for merge, key in (states if round_index % 2 == 0 else states[::-1]) * self.settings.sample_repeats:
                wall_s, cpu_s = self._sample_seconds(contestant, merge)
                tally.add(f"{key}_seconds_per_image", wall_s)
                tally.add(f"{key}_cpu_seconds_per_image", cpu_s)

    def profile(self, contestant: Contestant) -> Path:
        """One training step under torch.profiler; its operator table (by self time) to a text file."""
        from torch.profiler import ProfilerActivity, profile

        cuda = self.device.type == "cuda"
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            contestant.train(1, self.resolution)
        variant = contestant.variant
        name = f"profile_{self.model}_{self.resolution}_{variant.method}{'' if variant.cache_latents else '_nocache'}"
        table = prof.key_averages().table(
            sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=30
        )
        return atomic_write_text(Path(self.settings.profile_dir) / f"{name}.txt", table)

    @staticmethod
    def _file_size(method: Method, unet: nn.Module) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            return method.save(unet, Path(tmp) / "adapter.safetensors").stat().st_size

    def _sample_seconds(self, contestant: Contestant, merge: bool) -> tuple[float | None, float | None]:
        """(wall, CPU) seconds per image of `generate` (DDIM, guidance, per-image seeds).

        (None, None) when `merge` merges nothing; CPU time is None on a GPU.
        """
        method, unet = contestant.method, contestant.unet
        merged = method.prepare_for_sampling(unet, merge=merge)
        try:
            if merge and not merged:
                return None, None
            n = self.settings.sample_images
            with tempfile.TemporaryDirectory() as tmp, quiet_gc():
                t0, c0 = time.perf_counter(), time.process_time()
                generate(
                    contestant.pipe,
                    [PROMPT],
                    Path(tmp),
                    seed=self.settings.seed,
                    images_per_prompt=n,
                    steps=self.settings.sample_steps,
                    guidance=self.sample_cfg.guidance,
                    resolution=self.resolution,
                    batch_size=n,
                    scheduler=self.sample_cfg.scheduler,
                    progress=False,
                )
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                    return (time.perf_counter() - t0) / n, None
                return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n
        finally:
            method.finish_sampling(unet)


def attention_kernels(unet: nn.Module) -> dict[str, Any]:
    """The UNet's attention processors and, on CUDA, which SDPA kernels torch may pick (flash needs bf16/fp16)."""
    kernels: dict[str, Any] = {"processors": sorted({type(p).__name__ for p in unet.attn_processors.values()})}
    if unet.device.type == "cuda":
        kernels.update(
            flash=torch.backends.cuda.flash_sdp_enabled(),
            mem_efficient=torch.backends.cuda.mem_efficient_sdp_enabled(),
            math=torch.backends.cuda.math_sdp_enabled(),
        )
    return kernels


def _device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def variants_of(
    methods: Sequence[str], cache_method: str | None, compile_methods: Sequence[str] = ()
) -> list[Variant]:
    unknown = [m for m in methods if m not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown bench methods {unknown}; expected some of {list(VARIANTS)}")
    variants = [Variant(m) for m in methods]
    if cache_method:
        if cache_method not in methods or cache_method == "frozen":
            raise ValueError(f"--cache-method {cache_method!r} must be one of the trained --methods {list(methods)}")
        variants.append(Variant(cache_method, cache_latents=False))
    stray = [m for m in compile_methods if m not in methods]
    if stray:
        raise ValueError(f"--compile-methods {stray} must be among the --methods {list(methods)}")
    return variants + [Variant(m, compile=True) for m in compile_methods]


def run_rounds(bench: ModelBench, variants: list[Variant]) -> dict[Variant, Tally]:
    """Round-robin: each round trains `steps` steps of every variant in turn (the start rotates), then samples.

    Kept contestants (`settings.keep`, the default on CPU) are built once, each after a throw-away build of the
    same variant has paid the process's one-time costs (MKL/oneDNN workspaces, first-use allocations), so that
    their memory is their own; rounds then interleave single steps. Otherwise (CUDA, where every UNet copy is
    GBs) each round rebuilds every variant and measures its memory anew (median over rounds). A variant that
    fails (e.g. CUDA out of memory) is recorded and dropped.
    """
    tallies = {v: Tally() for v in variants}
    kept: dict[Variant, Contestant] = {}

    def attempt(variant: Variant, action) -> None:
        try:
            action()
        except torch.cuda.OutOfMemoryError as err:
            tallies[variant].error = f"CUDA out of memory: {str(err).splitlines()[0][:200]}"
            kept.pop(variant, None)
            release_memory(bench.device)

    if bench.settings.keep:
        for variant in variants:
            attempt(  # priming, discarded; its warm-up is the variant's first (compiled: includes compiling)
                variant, lambda v=variant: tallies[v].add("first_warmup_seconds", bench.build(v, None).warmup_seconds)
            )
            if not tallies[variant].error:
                attempt(variant, lambda v=variant: kept.__setitem__(v, bench.build(v, tallies[v])))
    for round_index in range(bench.settings.rounds):
        shift = round_index % len(variants)  # rotate the order: no method always follows the heaviest one
        for variant in variants[shift:] + variants[:shift]:
            if tallies[variant].error:
                continue
            log.info("%s %dpx round %d: %s", bench.model, bench.resolution, round_index, variant.label)

            def one_round(v=variant, r=round_index):
                contestant = kept.get(v) or bench.build(v, tallies[v])
                bench.measure(contestant, tallies[v], r)

            attempt(variant, one_round)
            if not bench.settings.keep:
                release_memory(bench.device)
    if bench.settings.profile_dir:
        for variant in (v for v in variants if not tallies[v].error):
            attempt(variant, lambda v=variant: bench.profile(kept.get(v) or bench.build(v, None)))
    return tallies


def records_of(bench: ModelBench, tallies: dict[Variant, Tally], prov: dict) -> list[dict]:
    unet_params = sum(p.numel() for p in bench.pipe.unet.parameters())
    attention = attention_kernels(bench.pipe.unet)
    records = []
    for variant, t in tallies.items():
        records.append(
            {
                "method": variant.method,
                "model": bench.model,
                "resolution": bench.resolution,
                "device": str(bench.device),
                "weights": "random",
                "batch_size": bench.settings.batch_size,
                "cache_latents": variant.cache_latents,
                "compile": variant.compile,
                **t.facts,
                **{key: t.median(key) for key in MEDIANS},
                "step_seconds_all": t.values.get("step_seconds", []),
                "peak_increase_mb_all": t.values.get("peak_increase_mb", []),
                "memory_measure": "cuda max_memory_allocated" if bench.device.type == "cuda" else "VmHWM",
                "sample_steps": bench.settings.sample_steps if t.values.get("sample_seconds_per_image") else None,
                "unet_params": unet_params,
                "attention": attention,
                "rounds": bench.settings.rounds,
                "warmup_steps": bench.settings.warmup,
                "first_warmup_seconds": t.first("first_warmup_seconds", "warmup_seconds"),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "error": t.error,
                "provenance": prov,
            }
        )
    return records


def model_plan(
    model: str, settings: Settings, variants: list[Variant], resolutions: Sequence[int] | None
) -> tuple[Sequence[int], list[Variant], Settings]:
    """(resolutions, variants, settings) of `model`: SDXL keeps one UNet copy at a time, and on a CPU runs the
    PaRa/LoRA comparison of `SDXL_CPU` (at 256 px unless --resolution says otherwise)."""
    if model not in RESOLUTIONS:
        raise ValueError(f"unknown model {model!r}; expected one of {list(RESOLUTIONS)}")
    if model != "sdxl":
        return resolutions or RESOLUTIONS[model], variants, settings
    # one UNet copy at a time: a kept copy per variant (GBs each) would not fit next to the base model
    settings = dataclasses.replace(settings, keep=False)
    if _device(settings.device).startswith("cuda"):
        return resolutions or RESOLUTIONS[model], variants, settings
    amp = "bf16" if settings.mixed_precision == "auto" else settings.mixed_precision
    cpu = dict(rounds=min(settings.rounds, SDXL_CPU["rounds"]), warmup=SDXL_CPU["warmup"], steps=SDXL_CPU["steps"])
    return (
        resolutions or (SDXL_CPU["resolution"],),
        [v for v in variants if v.method in SDXL_CPU["methods"] and v.cache_latents and not v.compile],
        dataclasses.replace(settings, **cpu, sample_images=0, mixed_precision=amp),
    )


def benchmark(
    models: Sequence[str], methods: Sequence[str], settings: Settings, resolutions: Sequence[int] | None = None
) -> list[dict]:
    """Run the benchmark; records with ratios added (see `para.bench.report.add_ratios`)."""
    variants = variants_of(methods, settings.cache_method, settings.compile_methods)
    prov = provenance(_device(settings.device))
    records = []
    for model in models:
        sizes, model_variants, model_settings = model_plan(model, settings, variants, resolutions)
        pipe = None
        if model == "sdxl":
            from para.bench.sdxl import build_sdxl_random_pipeline

            pipe = build_sdxl_random_pipeline(_device(settings.device), torch.bfloat16, settings.seed)
        for resolution in sizes:
            bench = ModelBench(model, resolution, model_settings, pipe)
            records += records_of(bench, run_rounds(bench, model_variants), prov)
            pipe = bench.pipe  # SDXL: build once, reuse for every resolution
            del bench
            release_memory(torch.device(_device(settings.device)))
    return add_ratios(records)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m para.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small", "sdxl"], choices=list(RESOLUTIONS))
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--resolution", type=int, nargs="+", help="override every model's resolutions")
    defaults = Settings()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="timed steps per method per round")
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="untimed steps after attaching")
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="rebuild every variant each round instead of keeping its UNet copy (default on CUDA)",
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--sample-images", type=int, default=defaults.sample_images, help="0 disables sampling")
    parser.add_argument("--sample-steps", type=int, default=defaults.sample_steps)
    parser.add_argument("--sample-repeats", type=int, default=defaults.sample_repeats, help="per round and state")
    parser.add_argument("--sample-methods", nargs="+", default=list(defaults.sample_methods), choices=list(VARIANTS))
    parser.add_argument("--cache-method", default=defaults.cache_method, help="'none' skips the caching variant")
    parser.add_argument(
        "--compile-methods",
        nargs="*",
        choices=list(VARIANTS),
        default=[],
        help="also train these with train.compile=true (each build compiles: minutes on SDXL; default none)",
    )
    parser.add_argument(
        "--mixed-precision",
        default=defaults.mixed_precision,
        choices=["auto", "bf16", "fp16", "no"],
        help="train.mixed_precision of every variant (auto: bf16 autocast on CUDA, none on CPU)",
    )
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--profile", action="store_true", help="also write a torch.profiler table per variant")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default on CPU: 1, see below)")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)
    for key in ("steps", "rounds", "batch_size", "sample_steps", "sample_repeats"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} {getattr(args, key)} out of range; expected >= 1")
    if args.warmup < 0 or args.sample_images < 0:
        parser.error("--warmup and --sample-images must be >= 0")
    if args.resolution and any(r <= 0 or r % 8 for r in args.resolution):
        parser.error(f"--resolution {args.resolution}: expected positive multiples of 8")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # One thread by default on CPU: the CPU models measure relative cost, and on 2 cores OpenMP's wake-ups per op
    # made the tiny model 3x slower at 2 threads than at 1 (small: 7 % faster at 2), swamping the methods'
    # differences; one thread also leaves a core to the rest of a shared machine, so the numbers stay steady.
    threads = args.threads or (1 if not _device(args.device).startswith("cuda") else None)
    if threads:
        torch.set_num_threads(threads)
    settings = Settings(
        steps=args.steps,
        rounds=args.rounds,
        warmup=args.warmup,
        batch_size=args.batch_size,
        sample_images=args.sample_images,
        sample_steps=args.sample_steps,
        sample_repeats=args.sample_repeats,
        mixed_precision=args.mixed_precision,
        device=args.device,
        sample_methods=tuple(args.sample_methods),
        profile_dir=args.out if args.profile else None,
        keep=not args.rebuild and not _device(args.device).startswith("cuda"),
        cache_method=None if args.cache_method in (None, "none") else args.cache_method,
        compile_methods=tuple(args.compile_methods),
    )
    try:
        records = benchmark(args.models, args.methods, settings, args.resolution)
    except ValueError as err:
        parser.error(str(err))
    write_results(args.out, "results", records, to_markdown(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
