"""Plausible harness bugs, each a test-only patch (docs/world.md "Mutation check").

Every one of them leaves the random-weight suite green — noise in, noise out — and must fail the world's
known-answer tests (tests/test_world_known_answers.py). `pytest --mutation NAME` runs any test session with the
bug in place (in this process: tests that spawn a process of their own do not see it); `MUTATIONS` lists them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from unittest import mock

import torch


@contextlib.contextmanager
def drop_identifier() -> Iterator[None]:
    """The training prompt loses the identifier: "a photo of  circle" (e.g. a template key renamed)."""
    from para.run import runner

    def prompt(template: str, token: str, class_word: str) -> str:
        return template.format(token="", class_word=class_word)

    with mock.patch.object(runner, "instance_prompt", prompt):
        yield


@contextlib.contextmanager
def adapter_not_applied() -> Iterator[None]:
    """Samples come from the base model: the sampler is built on the UNet as it was loaded, before the method."""
    import copy

    from para.core import sampling
    from para.run import runner

    load, build = runner.load_pipeline, sampling.sampling_pipeline
    as_loaded: dict[int, torch.nn.Module] = {}  # pipeline id -> a copy of its UNet when it was loaded

    def loaded(model_cfg, device):
        pipe = load(model_cfg, device)
        as_loaded[id(pipe)] = copy.deepcopy(pipe.unet)
        return pipe

    def sampler(pipe, scheduler):
        out = build(pipe, scheduler)
        if id(pipe) in as_loaded:
            out.unet = as_loaded[id(pipe)]
        return out

    with mock.patch.object(runner, "load_pipeline", loaded), mock.patch.object(sampling, "sampling_pipeline", sampler):
        yield


@contextlib.contextmanager
def lora_scale_lost() -> Iterator[None]:
    """LoRA samples at scale 1 instead of its α = 2.2 (e.g. `set_adapters` called without weights)."""
    from baselines import lora

    def prepare(self, unet, merge):
        unet.set_adapters([lora.ADAPTER], weights=[1.0])
        return False

    with mock.patch.object(lora.Lora, "prepare_for_sampling", prepare):
        yield


@contextlib.contextmanager
def schedule_mismatch() -> Iterator[None]:
    """Training adds noise with diffusers' default DDPM schedule (linear betas, epsilon), not the model's."""
    from diffusers import DDPMScheduler

    from para.core import trainer

    with mock.patch.object(trainer, "training_noise_schedule", lambda _config: DDPMScheduler()):
        yield


@contextlib.contextmanager
def pooled_zeroed() -> Iterator[None]:
    """The pooled text embedding (SDXL's `text_embeds`) is zeros while training."""
    from para.core import conditioning, trainer

    original = conditioning.encode_prompt

    def encode(pipe, prompt, resolution, grad=False):
        cond = original(pipe, prompt, resolution, grad)
        return conditioning.Conditioning(cond.prompt_embeds, torch.zeros_like(cond.pooled), cond.time_ids)

    with mock.patch.object(trainer, "encode_prompt", encode):
        yield


@contextlib.contextmanager
def latents_unscaled() -> Iterator[None]:
    """Training latents are not multiplied by the VAE's scaling factor (sampling still divides by it)."""
    from para.core import conditioning

    original = conditioning.SubjectLatents.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.scaling = 1.0

    with mock.patch.object(conditioning.SubjectLatents, "__init__", init):
        yield


@contextlib.contextmanager
def text_embeds_truncated() -> Iterator[None]:
    """Only the first encoder's half of the prompt embeddings reaches the UNet while training (the second half is
    zeros): the concatenation of SDXL's two encoders broken."""
    from para.core import conditioning, trainer

    original = conditioning.encode_prompt

    def encode(pipe, prompt, resolution, grad=False):
        cond = original(pipe, prompt, resolution, grad)
        half = pipe.text_encoder.config.hidden_size
        embeds = torch.cat([cond.prompt_embeds[..., :half], torch.zeros_like(cond.prompt_embeds[..., half:])], -1)
        return conditioning.Conditioning(embeds, cond.pooled, cond.time_ids)

    with mock.patch.object(trainer, "encode_prompt", encode):
        yield


MUTATIONS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "drop_identifier": drop_identifier,
    "adapter_not_applied": adapter_not_applied,
    "lora_scale_lost": lora_scale_lost,
    "schedule_mismatch": schedule_mismatch,
    "pooled_zeroed": pooled_zeroed,
    "latents_unscaled": latents_unscaled,
    "text_embeds_truncated": text_embeds_truncated,
}
