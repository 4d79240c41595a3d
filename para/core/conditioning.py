"""SDXL training inputs: cached VAE latents of the photos and text conditioning of the prompt.

The VAE and both text encoders are frozen, and a DreamBooth subject has 4–6 photos and one prompt, so the
latent distribution of every photo (and of its mirror image) and the prompt's embeddings are computed once.
Each step then costs only the UNet. `cache=False` recomputes them every step (measured by `make bench`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLPipeline


@dataclass
class Conditioning:
    prompt_embeds: Tensor  # (1, 77, 2048 on SDXL): penultimate hidden states of both encoders, concatenated
    pooled: Tensor  # (1, 1280 on SDXL): projected pooled output of text encoder 2
    time_ids: Tensor  # (1, 6): original size, crop top-left, target size (SDXL micro-conditioning)


def encode_prompt(pipe: StableDiffusionXLPipeline, prompt: str, resolution: int, grad: bool = False) -> Conditioning:
    """Text conditioning exactly as the SDXL pipeline computes it at sampling time (no classifier-free copy).

    `grad=True` keeps the graph, for runs that train the text encoders.
    """
    with torch.set_grad_enabled(grad):
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt, device=pipe.unet.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    # Photos are center-cropped and resized to the target size, so original = target and the crop is (0, 0).
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=embeds.dtype)
    return Conditioning(embeds, pooled, time_ids.to(embeds.device))


def photo_time_ids(sizes: list[tuple[int, int]], resolution: int) -> Tensor:
    """(N, 6) SDXL micro-conditioning of photos of `sizes` (height, width), center-cropped to a square and resized:
    the photo's true size, the crop's top-left corner in the resized photo, the target size.

    As diffusers' SDXL DreamBooth example computes them (resize the short side, then center-crop); a mirrored
    photo keeps its crop corner there too.
    """
    rows = []
    for height, width in sizes:
        short = min(height, width)  # torchvision's Resize(resolution): the long side truncated
        resized_h, resized_w = int(resolution * height / short), int(resolution * width / short)
        top = max(0, int(round((resized_h - resolution) / 2.0)))
        left = max(0, int(round((resized_w - resolution) / 2.0)))
        rows.append([height, width, top, left, resolution, resolution])
    return torch.tensor(rows, dtype=torch.float32)


@contextmanager
def in_float32(vae: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The VAE in float32 for the block, then back in its dtype (bf16 → fp32 → bf16 is exact: weights unchanged).

    Photos are encoded in fp32, as diffusers' SDXL training examples do ("the VAE is always in float32 to avoid
    NaN losses"): a handful of encodings per run, cached, so the precision costs nothing.
    """
    dtype = vae.dtype
    if dtype != torch.float32:
        vae.to(torch.float32)
    try:
        yield vae
    finally:
        if dtype != torch.float32:
            vae.to(dtype)


def _latent_moments(vae: torch.nn.Module, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std of the VAE's latent Gaussian for each image (unscaled), float32."""
    with torch.no_grad():
        dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float(), dist.std.float()


class SubjectLatents:
    """Draws training latents for a step: photo index, flip and latent sample all from the step's generator.

    `time_ids` (N, 6), optional: each photo's own micro-conditioning (`photo_time_ids`), drawn with its latents.
    """

    def __init__(
        self,
        pipe: StableDiffusionXLPipeline,
        pixels: Tensor,
        flip_p: float,
        cache: bool = True,
        time_ids: Tensor | None = None,
    ):
        self.pipe = pipe
        self.pixels = pixels  # (N, 3, H, W) in [-1, 1], on CPU
        self.flip_p = flip_p
        self.time_ids = time_ids
        self.scaling = pipe.vae.config.scaling_factor
        self.cached = None
        if cache:
            # (2N, 3, H, W): originals then mirror images; a subject never mirrored encodes only its N originals
            both = torch.cat([pixels, pixels.flip(-1)]) if flip_p > 0 else pixels
            # One image per VAE call: the whole batch at once held 2N images' encoder activations together (the
            # run's peak memory on `small`, `make bench-peer`; GBs at 1024 px), for no gain in a one-off cache.
            with in_float32(pipe.vae) as vae:
                moments = [_latent_moments(vae, image[None]) for image in both]
            self.cached = tuple(torch.cat(parts) for parts in zip(*moments, strict=True))

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def draw(self, generator: torch.Generator, batch_size: int) -> tuple[Tensor, Tensor | None]:
        """(batch, 4, H/8, W/8) scaled latents and their photos' (batch, 6) time_ids (None without `time_ids`),
        deterministic in the generator's state."""
        n = len(self)
        index = torch.randint(0, n, (batch_size,), generator=generator)
        flip = torch.rand(batch_size, generator=generator) < self.flip_p
        if self.cached is not None:
            mean, std = (m[index + n * flip.long()] for m in self.cached)
        else:
            pixels = torch.stack([p.flip(-1) if f else p for p, f in zip(self.pixels[index], flip, strict=True)])
            with in_float32(self.pipe.vae) as vae:
                mean, std = _latent_moments(vae, pixels)
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        time_ids = None if self.time_ids is None else self.time_ids[index].to(mean.device)
        return (mean + std * eps) * self.scaling, time_ids

    def sample(self, generator: torch.Generator, batch_size: int) -> Tensor:
        """(batch, 4, H/8, W/8) scaled latents, deterministic in the generator's state."""
        return self.draw(generator, batch_size)[0]
