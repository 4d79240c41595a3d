"""The pieces `para.bench.compare` measures with: settings, variants, tallies, and a "contestant" (a method attached to
its own copy of the base UNet, with its trainer), plus the floor: the frozen base model trained on nothing.

The floor's step is the same loss, forward and backward through the same frozen UNet, with the input latents
requiring grad so that the backward pass runs through every layer as it does for an adapter; nothing updates.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from torch import nn

from para.core.conditioning import SubjectLatents
from para.core.method import Method
from para.core.models import NO_WATERMARK
from para.core.sampling import PromptSpec
from para.core.trainer import Trainer
from para.run.registry import METHODS

PROMPT = PromptSpec(0, "a photo of sks dog", "a photo of dog")
# bench (and `para.bench.flops`) name -> (registry method to compose, extra overrides); None = the frozen floor
VARIANTS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "para": ("para", ()),
    "para_qr_per_layer": ("para", ("method.batch_qr=false",)),  # PaRa before batching its QRs (para.batched_qr)
    "lora": ("lora", ()),
    "lora_attn": ("lora_attn", ()),
    "dreambooth": ("dreambooth", ()),
    "frozen": (None, ()),
}


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Collect now and keep Python's cyclic GC out of the timed region (as `timeit` does): a method that leaves
    more Python objects behind (autograd graphs) would otherwise trigger collections inside another's timing."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class Settings:
    steps: int = 1  # timed steps per method per round
    rounds: int = 6
    warmup: int = 2  # untimed steps after attaching (the first one creates the optimizer state)
    keep: bool = True  # keep every variant's UNet copy for all rounds (False: rebuild each round, for GPUs)
    batch_size: int = 1
    sample_images: int = 1  # images per `generate` call (one batch) per round and merge state; 0 = no sampling
    sample_repeats: int = 3  # `generate` calls per round and merge state (a tiny model samples in ~35 ms)
    sample_steps: int = 2  # denoising steps per image (cost per image scales with it; ratios do not)
    sample_methods: tuple[str, ...] = ("para", "lora", "frozen")  # frozen = the base model
    cache_method: str | None = "para"  # also trained with cache_latents=false; None = skip
    compile_methods: tuple[str, ...] = ()  # also trained with train.compile=true (torch.compile, inductor)
    profile_dir: str | None = None  # write a torch.profiler table of one step per variant here
    seed: int = 0
    device: str = "auto"
    mixed_precision: str = "auto"  # train.mixed_precision (auto: bf16 autocast on CUDA, none on CPU)


@dataclass(frozen=True)
class Variant:
    method: str
    cache_latents: bool = True
    compile: bool = False

    @property
    def label(self) -> str:
        return self.method + (" (compiled)" if self.compile else "") + ("" if self.cache_latents else " (no cache)")


@dataclass
class Tally:
    """Everything measured for one variant over all its segments: lists of samples by record key."""

    values: dict[str, list[float]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # constant per variant: params, file size, dtype
    error: str | None = None

    def add(self, key: str, *values: float | None) -> None:
        self.values.setdefault(key, []).extend(v for v in values if v is not None)

    def first(self, *keys: str) -> float | None:
        """The first value of the first key that has any (e.g. the priming build's warm-up, else round 0's)."""
        return next((self.values[k][0] for k in keys if self.values.get(k)), None)

    def median(self, key: str) -> float | None:
        values = self.values.get(key)
        return statistics.median(values) if values else None


class MarkedLatents:
    """Latents that note the process's CPU time whenever a step draws them (its first action on the UNet side)."""

    def __init__(self, inner: Any, marks: list[float]):
        self.inner, self.marks = inner, marks

    def sample(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        self.marks.append(time.process_time())
        return self.inner.sample(generator, batch_size)


@dataclass
class Contestant:
    """One variant attached to its own copy of the base UNet, with its trainer."""

    variant: Variant
    method: Method
    unet: nn.Module
    pipe: StableDiffusionXLPipeline
    trainer: Trainer
    latents: Any  # SubjectLatents, or GradLatents for the floor
    warmup_seconds: float = 0.0  # the untimed warm-up steps after attaching (compiled: includes compiling)

    def train(self, steps: int, resolution: int) -> tuple[list[float], list[float]]:
        """Train `steps` steps through `Trainer.train`; (wall, CPU) seconds per step."""
        if steps <= 0:
            return [], []
        self.trainer.cfg.steps = steps  # each call trains steps 0..steps-1 again: same cost, no resume
        # CPU seconds of the process (steadier than wall time when other processes share the cores), from the
        # draw of each step's latents to the end of the step (uncached: the prompt's re-encoding is not counted).
        starts, ends = [], []
        latents = MarkedLatents(self.latents, starts)
        with quiet_gc():
            result = self.trainer.train(
                latents, PROMPT.prompt, resolution, callbacks=[lambda *_: ends.append(time.process_time())]
            )
        return result.step_seconds, [b - a for a, b in zip(starts, ends, strict=True)]


def with_unet(pipe: StableDiffusionXLPipeline, unet: nn.Module) -> StableDiffusionXLPipeline:
    """The same frozen components around another UNet."""
    sampler = StableDiffusionXLPipeline(**{**pipe.components, "unet": unet}, **NO_WATERMARK)
    sampler.set_progress_bar_config(disable=True)
    return sampler


@dataclass
class FrozenConfig:
    name: str = "frozen"
    lr: float = 1e-4


class Frozen(Method):
    """The floor: nothing of the UNet trains; the trainer still runs forward and backward (to the latents)."""

    name = "frozen"
    Config = FrozenConfig

    def attach(self, unet: nn.Module) -> list[nn.Parameter]:
        unet.requires_grad_(False)
        return []


def variant_overrides(name: str) -> list[str]:
    """Config overrides composing bench variant `name`'s method (the floor composes PaRa's config, unused)."""
    registry_name, extra = VARIANTS[name]
    return [f"method={registry_name or 'para'}", *extra]


def variant_method(name: str, method_cfg: Any, base_model: str) -> Method:
    """Bench variant `name` as a method of the registry (the floor: `Frozen`), not yet attached."""
    registry_name, _ = VARIANTS[name]
    return METHODS[registry_name](method_cfg, base_model) if registry_name else Frozen({}, base_model)


class GradLatents:
    """Training latents that require grad, so the floor's backward runs through the whole UNet like an adapter's."""

    def __init__(self, inner: SubjectLatents):
        self.inner = inner

    def sample(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        return self.inner.sample(generator, batch_size).requires_grad_(True)
