"""How much the world model leans on SDXL's pooled text embedding (docs/world.md, "Mutation check").

    python scripts/world_pooled_probe.py [--scenes 64] [--draws 4]

The base world model's v-prediction loss on fresh renders of ordinary scenes, conditioned through the harness's
own `encode_prompt` (as training is), then with the pooled embedding zeroed (the `pooled_zeroed` planted bug),
shuffled across the batch (another prompt's), and with the second encoder's half of the token embeddings zeroed
(`text_embeds_truncated`). The same noise and timesteps for every variant (paired).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from para.core.conditioning import encode_prompt
from para.core.models import load_pipeline
from para.core.trainer import training_noise_schedule
from para.run.config import compose_config
from world import render as world_render


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--draws", type=int, default=4, help="noise/timestep draws per scene")
    args = parser.parse_args(argv)
    cfg = compose_config("model=world", "subject=sun_disc", "method=para", "run_dir=unused")
    pipe = load_pipeline(cfg.model, torch.device("cpu"))
    schedule = training_noise_schedule(pipe.scheduler.config)  # the schedule training adds noise with
    rng = np.random.default_rng(0)
    scenes = [world_render.random_scene(rng) for _ in range(args.scenes)]
    pixels = torch.stack(
        [torch.from_numpy(world_render.render(s).astype(np.float32) / 127.5 - 1).permute(2, 0, 1) for s in scenes]
    )
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
        conds = [encode_prompt(pipe, world_render.caption(s), cfg.model.resolution) for s in scenes]
        embeds = torch.cat([c.prompt_embeds for c in conds])
        pooled, time_ids = torch.cat([c.pooled for c in conds]), torch.cat([c.time_ids for c in conds])
        half = embeds.shape[-1] // 2
        variants = {
            "as trained": (embeds, pooled),
            "pooled zeroed": (embeds, torch.zeros_like(pooled)),
            "pooled shuffled": (embeds, pooled.roll(1, 0)),
            "second encoder's half zeroed": (torch.cat([embeds[..., :half], 0 * embeds[..., half:]], -1), pooled),
        }
        losses = {name: [] for name in variants}
        generator = torch.Generator().manual_seed(0)
        for _ in range(args.draws):
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.randint(0, schedule.config.num_train_timesteps, (len(scenes),), generator=generator)
            noisy, target = schedule.add_noise(latents, noise, t), schedule.get_velocity(latents, noise, t)
            for name, (hidden, text_embeds) in variants.items():
                extra = {"text_embeds": text_embeds, "time_ids": time_ids}
                pred = pipe.unet(noisy, t, encoder_hidden_states=hidden, added_cond_kwargs=extra).sample
                losses[name].append(float(((pred - target) ** 2).mean()))
    base = np.mean(losses["as trained"])
    for name, values in losses.items():
        print(f"{name:32s} loss {np.mean(values):.5f} ({np.mean(values) / base - 1:+.1%})")


if __name__ == "__main__":
    main()
