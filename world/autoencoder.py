"""Train the world's VAE: an SDXL-shaped 8x AutoencoderKL that reconstructs any flat-colour scene.

It never sees a subject: it learns from ordinary scenes and from scenes painted in random colours with random
two-colour patterns, so it is a general codec of the world's images (as SDXL's VAE is of photos), not a
memory of the subjects. Its latent scale is set so that encoded renders have unit variance (SDXL's
`scaling_factor`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from world.render import POSITIONS, SHAPES, SIZE, Thing, jitter, random_scene, render

log = logging.getLogger(__name__)


def random_colour_image(rng: np.random.Generator) -> np.ndarray:
    """A scene in colours and patterns of no caption: the VAE must code whatever the world can paint."""
    n = SIZE * 4
    canvas = np.empty((n, n, 3), dtype=np.float32)
    canvas[:] = rng.integers(0, 256, 3)
    img = canvas
    k = rng.integers(1, 3)
    positions = rng.choice(POSITIONS, size=k, replace=False)
    x, y = np.meshgrid((np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n)
    for p in positions:
        thing = jitter(rng, Thing(shape=str(rng.choice(SHAPES)), position=str(p), colour="red"), live=True)
        from world.render import RADIUS, SLOT_X, _inside

        cx, cy, r = SLOT_X[thing.position] + thing.dx, 0.5 + thing.dy, RADIUS * thing.scale
        c, s = math.cos(thing.angle), math.sin(thing.angle)
        px, py = (x - cx) / r, (y - cy) / r
        u, v = (c * px + s * py) / thing.squash, (-s * px + c * py) * thing.squash
        mask = _inside(thing.shape, u, v)
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        style = rng.integers(0, 5)
        second = [
            u + v < 0,
            u * u + v * v < rng.uniform(0.1, 0.5),
            np.floor((v + 2) / 0.7) % 2 == 0,
            (u < 0) ^ (v < 0),
            np.zeros_like(mask),
        ][style]
        img[mask & ~second] = a
        img[mask & second] = b
    small = img.reshape(SIZE, 4, SIZE, 4, 3).mean(axis=(1, 3))
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)


def training_image(rng: np.random.Generator) -> np.ndarray:
    return render(random_scene(rng)) if rng.random() < 0.5 else random_colour_image(rng)


def to_pixels(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images → (N, 3, H, W) in [-1, 1], the VAE's input range."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def random_crops(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """One `size` crop per image, at offsets on the VAE's 8-pixel grid: the VAE is convolutional, so crops teach
    it what whole images do, at a quarter of the cost for half-size crops."""
    n, _, h, w = x.shape
    tops = rng.integers(0, (h - size) // 8 + 1, n) * 8
    lefts = rng.integers(0, (w - size) // 8 + 1, n) * 8
    return torch.stack([img[:, t : t + size, s : s + size] for img, t, s in zip(x, tops, lefts, strict=True)])


def train_vae(
    vae: AutoencoderKL,
    steps: int,
    batch: int,
    seed: int,
    lr: float = 2e-3,
    kl: float = 1e-6,
    crop: int = SIZE,
    bf16: bool = True,
) -> dict:
    rng = np.random.default_rng([seed, 1])
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    vae.train()
    losses = []
    for _ in tqdm(range(steps), desc="world: vae", dynamic_ncols=True):
        x = random_crops(to_pixels([training_image(rng) for _ in range(batch)]), crop, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # ~2x faster on CPUs with bf16 units
            dist = vae.encode(x).latent_dist
            y = vae.decode(dist.sample()).sample.float()
        rec = (y - x).abs().mean() + ((y - x) ** 2).mean()
        loss = rec + kl * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(rec.item())
    vae.eval().requires_grad_(False)
    # SDXL's convention: latents are multiplied by scaling_factor so that they have unit variance
    with torch.no_grad():
        x = to_pixels([render(random_scene(rng)) for _ in range(256)])
        z = vae.encode(x).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    return {"final_loss": float(np.mean(losses[-50:])), "scaling_factor": vae.config.scaling_factor}


def reconstruction_error(vae: AutoencoderKL, images: list[np.ndarray]) -> float:
    """Mean absolute error in 8-bit levels of decode(mean(encode(x)))."""
    with torch.no_grad():
        x = to_pixels(images)
        y = vae.decode(vae.encode(x).latent_dist.mean).sample
    return float(((y - x).abs() * 127.5).mean())
