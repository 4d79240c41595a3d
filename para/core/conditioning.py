"""SDXL training inputs: cached VAE latents of the photos and text conditioning of the prompt.

The VAE and both text encoders are frozen, and a DreamBooth subject has 4–6 photos and one prompt, so the
latent distribution of every photo (and of its mirror image) and the prompt's embeddings are computed once.
Each step then costs only the UNet. `cache=False` recomputes them every step (measured by `make bench`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionXLPipeline
from torch import Tensor


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


def _latent_moments(pipe: StableDiffusionXLPipeline, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std of the VAE's latent Gaussian for each image (unscaled)."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    dtype = torch.float32 if upcast else vae.dtype
    if upcast:
        vae.to(torch.float32)
    with torch.no_grad():
        dist = vae.encode(pixels.to(vae.device, dtype)).latent_dist
    if upcast:
        vae.to(torch.float16)
    return dist.mean.float(), dist.std.float()


class SubjectLatents:
    """Draws training latents for a step: photo index, flip and latent sample all from the step's generator."""

    def __init__(self, pipe: StableDiffusionXLPipeline, pixels: Tensor, flip_p: float, cache: bool = True):
        self.pipe = pipe
        self.pixels = pixels  # (N, 3, H, W) in [-1, 1], on CPU
        self.flip_p = flip_p
        self.scaling = pipe.vae.config.scaling_factor
        self.cached = None
        if cache:
            both = torch.cat([pixels, pixels.flip(-1)])  # (2N, 3, H, W): originals then mirror images
            # One image per VAE call: the whole batch at once held 2N images' encoder activations together (the
            # run's peak memory on `small`, `make bench-peer`; GBs at 1024 px), for no gain in a one-off cache.
            moments = [_latent_moments(pipe, image[None]) for image in both]
            self.cached = tuple(torch.cat(parts) for parts in zip(*moments, strict=True))

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def sample(self, generator: torch.Generator, batch_size: int) -> Tensor:
        """(batch, 4, H/8, W/8) scaled latents, deterministic in the generator's state."""
        n = len(self)
        index = torch.randint(0, n, (batch_size,), generator=generator)
        flip = torch.rand(batch_size, generator=generator) < self.flip_p
        if self.cached is not None:
            mean, std = (m[index + n * flip.long()] for m in self.cached)
        else:
            pixels = torch.stack([p.flip(-1) if f else p for p, f in zip(self.pixels[index], flip, strict=True)])
            mean, std = _latent_moments(self.pipe, pixels)
        eps = torch.randn(mean.shape, generator=generator).to(mean.device)
        return (mean + std * eps) * self.scaling
