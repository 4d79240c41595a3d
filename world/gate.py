"""The world's gate: does the pretrained model follow its captions, attribute by attribute?

Captions of random scenes (every attribute named), one image each from its own seed, read back by the evaluator:
the share of images in which each attribute is what the caption says, with a 95 % Wilson interval.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline

from world.evaluator import BACKGROUND_NAMES, COLOUR_NAMES, Evaluator
from world.render import POSITIONS, SHAPES, SIZE, caption, random_scene


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def sample_images(
    pipe: StableDiffusionXLPipeline, prompts: list[str], seeds: list[int], steps: int, guidance: float, batch: int = 64
) -> torch.Tensor:
    """(N, 3, SIZE, SIZE) images in [-1, 1] with the DDIM sampler, image i from seed `seeds[i]`."""
    sampler = StableDiffusionXLPipeline(
        **{**pipe.components, "scheduler": DDIMScheduler.from_config(pipe.scheduler.config)}
    )
    sampler.set_progress_bar_config(disable=True)
    out = []
    for start in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[start : start + batch]]
        with torch.no_grad():
            images = sampler(
                prompt=prompts[start : start + batch],
                generator=gens,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=SIZE,
                width=SIZE,
                output_type="pt",
            ).images
        out.append(images * 2 - 1)
    return torch.cat(out)


def read_attributes(evaluator: Evaluator, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: background index, per slot presence probability, shape and colour indices."""
    with torch.no_grad():
        out = evaluator(images)
    return {
        "background": out["background"].argmax(-1),
        "present": out["present"].softmax(-1)[..., 1],  # (N, 3)
        "shape": out["shape"].argmax(-1),
        "colour": out["colour"].argmax(-1),
        "identity": out["identity"].softmax(-1),  # (N, 3, 1 + subjects)
        "embedding": out["embedding"],
    }


def caption_fidelity(pipe, evaluator: Evaluator, n: int, seed: int, steps: int, guidance: float, two_p: float = 0.0):
    """Share of sampled images showing each attribute of their caption, with intervals."""
    rng = np.random.default_rng([seed, 6])
    scenes = [random_scene(rng, two_p) for _ in range(n)]
    prompts = [caption(s) for s in scenes]
    images = sample_images(pipe, prompts, [seed * 100_000 + i for i in range(n)], steps, guidance)
    read = read_attributes(evaluator, images)
    hits = {"background": 0, "position": 0, "shape": 0, "colour": 0}
    counts = dict.fromkeys(hits, 0)
    for i, scene in enumerate(scenes):
        hits["background"] += int(read["background"][i] == BACKGROUND_NAMES.index(scene.background))
        counts["background"] += 1
        present = read["present"][i]
        for thing in scene.things:
            k = POSITIONS.index(thing.position)
            if len(scene.things) == 1:
                found = int(present.argmax())
                ok_pos = found == k
            else:
                found, ok_pos = k, bool(present[k] > 0.5)
            hits["position"] += int(ok_pos)
            hits["shape"] += int(read["shape"][i, found] == SHAPES.index(thing.shape))
            hits["colour"] += int(read["colour"][i, found] == COLOUR_NAMES.index(thing.colour))
            for key in ("position", "shape", "colour"):
                counts[key] += 1
    return (
        {
            key: {"share": hits[key] / counts[key], "ci95": wilson(hits[key], counts[key]), "n": counts[key]}
            for key in hits
        },
        images,
        prompts,
    )
