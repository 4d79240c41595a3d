"""Evaluation images: DreamBench prompts × N images, each image from its own seeded noise.

The noise of image i of prompt p depends only on (seed, p, i), never on the method or the batch layout, so
PaRa, LoRA and DreamBooth start every image from the same noise: comparisons are paired. Images already on
disk are kept, so an interrupted sampling run continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline
from PIL import Image
from tqdm.auto import tqdm

from para.core.io import atomic_write_bytes, atomic_write_json, read_json
from para.core.models import NO_WATERMARK


@dataclass
class PromptSpec:
    index: int
    prompt: str  # with the identifier token, what the model is prompted with
    clean_prompt: str  # without it, what CLIP-T scores against


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    return seed * 1_000_000 + prompt_index * 1_000 + image_index


def image_name(prompt_index: int, image_index: int) -> str:
    return f"p{prompt_index:02d}_i{image_index:02d}.png"


def sampling_pipeline(pipe: StableDiffusionXLPipeline, scheduler: str) -> StableDiffusionXLPipeline:
    """The same components with the paper's DDIM sampler (`scheduler=default` keeps the model's own), never
    watermarking (a pipeline built elsewhere keeps its own sampler but loses its watermarker)."""
    components = dict(pipe.components)
    if scheduler != "default":
        components["scheduler"] = DDIMScheduler.from_config(pipe.scheduler.config)
    sampler = StableDiffusionXLPipeline(**components, **NO_WATERMARK)
    sampler.set_progress_bar_config(disable=True)
    return sampler


def generate(
    pipe: StableDiffusionXLPipeline,
    prompts: list[PromptSpec],
    out_dir: Path,
    *,
    seed: int,
    images_per_prompt: int,
    steps: int,
    guidance: float,
    resolution: int,
    batch_size: int,
    scheduler: str = "ddim",
    progress: bool = True,
) -> Path:
    """Write `out_dir/pXX_iYY.png` and `out_dir/prompts.json`; returns the prompts.json path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = sampling_pipeline(pipe, scheduler)
    jobs = [
        (p, i) for p in prompts for i in range(images_per_prompt) if not (out_dir / image_name(p.index, i)).exists()
    ]
    bar = tqdm(total=len(jobs), desc="sample", disable=not progress or None, dynamic_ncols=True)
    # One batch = up to batch_size images, across prompts: each image has its own prompt and its own generator,
    # so an image does not depend on which batch it lands in (tested: batch 1 and batch 3 give the same images).
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(image_seed(seed, spec.index, i)) for spec, i in chunk]
        with torch.no_grad():
            images = sampler(
                prompt=[spec.prompt for spec, _ in chunk],
                num_images_per_prompt=1,
                generator=generators,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=resolution,
                width=resolution,
            ).images
        for (spec, i), image in zip(chunk, images, strict=True):
            _save_png(image, out_dir / image_name(spec.index, i))
        bar.update(len(chunk))
    bar.close()
    index = [
        {
            "prompt_index": p.index,
            "prompt": p.prompt,
            "clean_prompt": p.clean_prompt,
            "images": [image_name(p.index, i) for i in range(images_per_prompt)],
        }
        for p in prompts
    ]
    return atomic_write_json(out_dir / "prompts.json", index)


def _save_png(image, path: Path) -> None:
    # A temp name of its own per writer: parallel runs fill the shared class-image cache with the same files.
    atomic_write_bytes(path, lambda f: image.save(f, format="PNG"))


def valid_image(path: Path, size: int | None = None) -> bool:
    """Whether `path` decodes in full (and is `size` × `size` when given): a cache entry to trust."""
    try:
        with Image.open(path) as image:
            image.load()
            return size is None or image.size == (size, size)
    except Exception:  # noqa: BLE001 - Pillow raises many types for broken files; all mean "make it again"
        return False


def read_prompts(samples_dir: Path) -> list[dict]:
    return read_json(samples_dir / "prompts.json")
