"""Put the world together from its stages (world.stages), measure the gate, and install it if it passes."""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from world.evaluator import Evaluator
from world.gate import caption_fidelity, read_attributes, sample_images
from world.render import SUBJECTS
from world.stages import (
    ASSETS,
    CACHE,
    ROOT,
    WorldSettings,
    build_evaluator,
    build_pipeline,
    build_vae,
    cached,
    evaluator_digest,
    world_digest,
)
from world.subject_configs import write_configs
from world.subjects import evaluation_templates, write_photos

log = logging.getLogger("world")
GATE = {"evaluator_accuracy": 0.99, "base_identity": 0.05, "caption_fidelity": 0.8}
TOKEN = "sks"


def base_identity(pipe, evaluator: Evaluator, s: WorldSettings) -> dict[str, float]:
    """The untouched model's samples of every subject prompt: identity probability (must be ~0: unknown)."""
    from world.scorer import identity_probability

    out = {}
    for k, name in enumerate(sorted(SUBJECTS)):
        cls = SUBJECTS[name].class_word
        prompts = [t.format(token=TOKEN, cls=cls) for t in evaluation_templates(name) if "{token}" in t]
        seeds = [s.seed * 1000 + k * 100 + i for i in range(len(prompts))]
        images = sample_images(pipe, prompts, seeds, s.sample_steps, s.guidance)
        out[name] = float(identity_probability(read_attributes(evaluator, images), name).mean())
    return out


def measure_gate(pipe, evaluator: Evaluator, evaluator_info: dict, s: WorldSettings) -> dict:
    fidelity, images, prompts = caption_fidelity(
        pipe, evaluator, s.gate_samples, s.seed + 7, s.sample_steps, s.guidance, two_p=0.0
    )
    identity = base_identity(pipe, evaluator, s)
    accuracy = {
        **{f"renders/{k}": v for k, v in evaluator_info["held_out_accuracy"].items()},
        **{f"vae/{k}": v for k, v in evaluator_info["held_out_accuracy_vae"].items()},
    }
    checks = {
        # the gate: held-out renders, augmented; through the VAE (what the evaluator sees of a perfect
        # generation: the round trip blurs the subjects' patterns) is reported beside, not gated
        "evaluator_accuracy": min(v for k, v in accuracy.items() if k.startswith("renders/"))
        >= GATE["evaluator_accuracy"],
        "base_identity": max(identity.values()) <= GATE["base_identity"],
        "caption_fidelity": min(v["share"] for v in fidelity.values()) >= GATE["caption_fidelity"],
    }
    return (
        {
            "thresholds": GATE,
            "evaluator_accuracy": accuracy,
            "base_identity": identity,
            "caption_fidelity": fidelity,
            "passed": all(checks.values()),
            "checks": checks,
        },
        images,
        prompts,
    )


def write_world(folder: Path, pipe, evaluator: Evaluator, s: WorldSettings) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    half = {k: v.half().contiguous() for k, v in evaluator.state_dict().items()}  # 1.7 MB instead of 3.5
    save_file(half, str(folder / "evaluator.safetensors"))
    pipe.to(torch.float16).save_pretrained(folder / "model", safe_serialization=True)
    pipe.to(torch.float32)
    write_photos(folder / "subjects", s.photos_per_subject, s.seed)


def sheet(images: torch.Tensor, path: Path, per_row: int = 16) -> None:
    from PIL import Image

    x = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    rows = [np.concatenate(list(x[i : i + per_row]), 1) for i in range(0, len(x) - per_row + 1, per_row)]
    Image.fromarray(np.concatenate(rows, 0)).save(path)


def assemble(s: WorldSettings, out: Path, force: bool) -> int:
    digest = world_digest(s)
    build_file = out / "build.json"
    if not force and build_file.is_file() and json.loads(build_file.read_text()).get("digest") == digest:
        log.info("world: %s is up to date (digest %s); --force rebuilds it", out, digest)
        return 0
    torch.set_num_threads(s.threads)
    started = time.perf_counter()
    staging = CACHE / f"staging-{digest}"
    shutil.rmtree(staging, ignore_errors=True)  # our own scratch folder
    log.info("world: [1/4] VAE")
    vae, _, vae_info = build_vae(s)
    log.info("world: [2/4] evaluator (in a process of its own) and pretraining, side by side")
    # Small convolutions scale poorly over threads: two one-thread processes do more than one two-thread one.
    child = None if cached("evaluator", evaluator_digest(s)).is_file() else _start_evaluator(s)
    torch.set_num_threads(s.threads if child is None else max(1, s.threads - 1))
    pipe, _, pretrain_info = build_pipeline(s, vae, staging / "tokenizer")
    if child is not None:
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"the evaluator's process failed (exit code {child.exitcode}); see its output above")
    evaluator, _, evaluator_info = build_evaluator(s, vae)  # now from the cache
    torch.set_num_threads(s.threads)
    log.info("world: [3/4] writing the model, the evaluator and the subjects")
    write_world(staging, pipe, evaluator, s)
    from diffusers import StableDiffusionXLPipeline

    # the gate measures the world as the harness will load it: the fp16 folder, read back in fp32
    saved = StableDiffusionXLPipeline.from_pretrained(staging / "model", dtype=torch.float32)
    log.info("world: [4/4] gate")
    gate, images, prompts = measure_gate(saved, evaluator, evaluator_info, s)
    sheet(images[:64], staging / "gate_samples.png")
    (staging / "gate_prompts.json").write_text(json.dumps(prompts[:64], indent=1))
    info = {
        "digest": digest,
        "settings": asdict(s),
        "gate": gate,
        "stages": {"vae": vae_info, "evaluator": evaluator_info, "pretrain": pretrain_info},
        "build_seconds": time.perf_counter() - started,
        "machine": {"cpus": torch.get_num_threads(), "processor": platform.processor() or platform.machine()},
        "command": "make world",
    }
    (staging / "build.json").write_text(json.dumps(info, indent=1))
    log.info("world: gate %s: %s", "PASSED" if gate["passed"] else "FAILED", json.dumps(gate["checks"]))
    if not gate["passed"]:
        failed = ROOT / "runs" / "world-failed"
        shutil.rmtree(failed, ignore_errors=True)  # the previous failed build, ours
        shutil.copytree(staging, failed)
        log.error("world: the gate failed; the world was not installed. What was built: %s (build.json)", failed)
        return 1
    install(staging, out)
    write_configs(ROOT / "conf" / "subject", str((out / "subjects").relative_to(ROOT)))
    if out == ASSETS:  # the documented world: docs/world.md shows its figures
        from world.report import update_docs

        update_docs(out / "build.json")
    log.info("world: installed in %s in %.0f s", out, info["build_seconds"])
    return 0


def _evaluator_stage(s: WorldSettings) -> None:
    torch.set_num_threads(1)
    vae, _, _ = build_vae(s)  # from the cache the parent filled
    build_evaluator(s, vae)


def _start_evaluator(s: WorldSettings):
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(target=_evaluator_stage, args=(s,), daemon=True)
    process.start()
    return process


def install(staging: Path, out: Path) -> None:
    """Replace the world's own entries in `out` (and only those) with the staged ones."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in ("model", "subjects", "evaluator.safetensors", "gate_samples.png", "gate_prompts.json", "build.json"):
        target = out / entry
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        source = staging / entry
        shutil.copytree(source, target) if source.is_dir() else shutil.copy2(source, target)
