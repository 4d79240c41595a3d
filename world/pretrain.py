"""Pretrain the world model from scratch: the UNet and both text encoders, on captioned renders, through the very
conditioning SDXL's pipeline computes at sampling time (`StableDiffusionXLPipeline.encode_prompt`, zeroed
embeddings for the unconditional branch as `force_zeros_for_empty_prompt` does, `time_ids`).

v-prediction with min-SNR-5 weighting, AdamW one-cycle, an EMA of the weights (WORLD.md's prototype measured
these as the better choices at this size). Captions drop each attribute with probability `drop_p` and are emptied
with probability `uncond_p` (for classifier-free guidance).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionXLPipeline
from tqdm.auto import tqdm

from world.autoencoder import to_pixels
from world.render import SIZE, caption, random_scene, render

log = logging.getLogger(__name__)
ATTRIBUTES = ("colour", "position", "background")


@dataclass
class PretrainSettings:
    steps: int = 3500
    batch: int = 64
    lr: float = 1e-3
    pool: int = 20_000  # distinct scenes, encoded once by the VAE; captions vary every time a scene is drawn
    drop_p: float = 0.2
    uncond_p: float = 0.1
    two_p: float = 0.25  # scenes with two objects (left and right)
    ema: float = 0.998
    min_snr: float = 5.0
    seed: int = 0
    bf16: bool = False  # bf16 autocast for the forward pass (weights and optimizer stay fp32)


def scene_pool(pipe: StableDiffusionXLPipeline, n: int, seed: int, two_p: float, progress: bool = True):
    """`n` random scenes and the VAE's latent mean and std of each, (n, C, 8, 8), unscaled."""
    rng = np.random.default_rng([seed, 4])
    scenes = [random_scene(rng, two_p) for _ in range(n)]
    means, stds = [], []
    with torch.no_grad():
        for start in tqdm(range(0, n, 256), desc="world: encode scenes", disable=not progress, dynamic_ncols=True):
            x = to_pixels([render(s) for s in scenes[start : start + 256]])
            dist = pipe.vae.encode(x).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return scenes, torch.cat(means), torch.cat(stds)


def random_caption(rng: np.random.Generator, scene, drop_p: float, uncond_p: float) -> str:
    if rng.random() < uncond_p:
        return ""
    drop = frozenset(a for a in ATTRIBUTES if rng.random() < drop_p)
    return caption(scene, drop)


class TextConditioner:
    """Prompt embeddings as SDXL's pipeline computes them; "" gives zeros (force_zeros_for_empty_prompt)."""

    def __init__(self, pipe: StableDiffusionXLPipeline):
        self.pipe = pipe

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompts, device=torch.device("cpu"), num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        keep = torch.tensor([bool(p) for p in prompts], dtype=embeds.dtype)
        return embeds * keep[:, None, None], pooled * keep[:, None]


def pretrain(pipe: StableDiffusionXLPipeline, settings: PretrainSettings, progress: bool = True) -> dict:
    """Train `pipe.unet` and both text encoders in place; the EMA weights are copied in at the end."""
    s = settings
    torch.manual_seed(s.seed)
    rng = np.random.default_rng([s.seed, 5])
    scenes, means, stds = scene_pool(pipe, s.pool, s.seed, s.two_p, progress)
    scaling = pipe.vae.config.scaling_factor
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    alphas = noise_scheduler.alphas_cumprod
    trained = [pipe.unet, pipe.text_encoder, pipe.text_encoder_2]
    for module in trained:
        module.train().requires_grad_(True)
    params = [p for m in trained for p in m.parameters()]
    ema = [copy.deepcopy(m).requires_grad_(False) for m in trained]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=s.steps, pct_start=0.05)
    text = TextConditioner(pipe)
    time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=torch.float32)
    losses = []
    bar = tqdm(range(s.steps), desc="world: pretrain", disable=not progress, dynamic_ncols=True)
    for step in bar:
        index = rng.integers(0, len(scenes), s.batch)
        idx = torch.from_numpy(index)
        latents = (means[idx] + stds[idx] * torch.randn_like(means[idx])) * scaling
        prompts = [random_caption(rng, scenes[i], s.drop_p, s.uncond_p) for i in index]
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (s.batch,))
        noisy = noise_scheduler.add_noise(latents, noise, t)
        target = noise_scheduler.get_velocity(latents, noise, t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=s.bf16):
            embeds, pooled = text(prompts)
            pred = pipe.unet(
                noisy,
                t,
                encoder_hidden_states=embeds,
                added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.expand(s.batch, -1)},
            ).sample.float()
        snr = alphas[t] / (1 - alphas[t])
        # min-SNR-γ, floored at 1 in x0 terms: the v-loss is x0's error x (snr + 1), min-SNR weighs x0's error by
        # min(snr, γ), which all but ignores the high-noise steps where the layout (shape, place) is decided
        weight = torch.clamp(snr, min=1.0, max=s.min_snr) / (snr + 1)
        loss = (weight * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(s.ema, (1 + step) / (10 + step))
            for shadow, model in zip(ema, trained, strict=True):
                for e, p in zip(shadow.parameters(), model.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    with torch.no_grad():
        for shadow, model in zip(ema, trained, strict=True):
            model.load_state_dict(shadow.state_dict())
            model.eval().requires_grad_(False)
    return {"losses": losses[:: max(1, len(losses) // 200)], "final_loss": float(np.mean(losses[-100:]))}
