"""The world's stages (VAE, evaluator, pretraining), each cached by a digest of its settings and code; `make world`
runs them through world.assemble (world/build.py is its command line)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from world import components
from world.pretrain import PretrainSettings

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(__file__).resolve().parent / "assets"
CACHE = ROOT / "runs" / ".cache" / "world"


# The modules whose code decides what each stage makes (not the orchestration in build/assemble, nor the scorer,
# the report, the subjects' config files or the harness): a change elsewhere keeps the cached stages and the world.
STAGE_CODE = {
    "vae": ("render", "components", "autoencoder"),
    "evaluator": ("render", "evaluator"),
    "pretrain": ("render", "components", "pretrain"),
    "world": ("render", "subjects", "gate"),  # the photos, the prompts and the gate's measurement
}


@dataclass
class WorldSettings:
    seed: int = 0
    unet_width: int = 48  # 64 also passes the gate at 2/3 of the samples, for 1.6x the compute per sample
    vae_steps: int = 3500
    vae_batch: int = 32
    evaluator_steps: int = 2000
    evaluator_batch: int = 128
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    photos_per_subject: int = 5
    # the sampler the gate measures and `conf/model/world.yaml` sets (WORLD.md: 20 DDIM steps, guidance 1.5)
    sample_steps: int = 20
    guidance: float = 1.5
    gate_samples: int = 256
    threads: int = 2


def code_digest(stage: str) -> str:
    digest = hashlib.sha256()
    for name in STAGE_CODE[stage]:
        digest.update(name.encode())
        digest.update((Path(__file__).resolve().parent / f"{name}.py").read_bytes())
    return digest.hexdigest()


def stage_digest(name: str, settings: dict, *parents: str) -> str:
    text = json.dumps([name, settings, code_digest(name), *parents], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def vae_digest(s: WorldSettings) -> str:
    return stage_digest("vae", {"steps": s.vae_steps, "batch": s.vae_batch, "seed": s.seed})


def evaluator_digest(s: WorldSettings) -> str:
    settings = {"steps": s.evaluator_steps, "batch": s.evaluator_batch, "seed": s.seed}
    return stage_digest("evaluator", settings, vae_digest(s))


def pretrain_digest(s: WorldSettings) -> str:
    return stage_digest("pretrain", {"unet_width": s.unet_width, **asdict(s.pretrain)}, vae_digest(s))


def world_digest(s: WorldSettings) -> str:
    """The finished world's: its settings, every stage's digest, and the code of its photos, prompts and gate."""
    return stage_digest("world", asdict(s), evaluator_digest(s), pretrain_digest(s))


def cached(name: str, digest: str) -> Path:
    return CACHE / f"{name}-{digest}.safetensors"


def build_vae(s: WorldSettings) -> tuple[torch.nn.Module, str, dict]:
    from world.autoencoder import reconstruction_error, train_vae

    digest = vae_digest(s)
    vae = components.build_models(10, s.seed)["vae"]
    path = cached("vae", digest)
    if path.is_file():
        state = load_file(path)
        scaling = float(state.pop("scaling_factor"))
        vae.load_state_dict(state)
        vae.register_to_config(scaling_factor=scaling)
        info = json.loads(path.with_suffix(".json").read_text())
    else:
        started = time.perf_counter()
        info = train_vae(vae, s.vae_steps, s.vae_batch, s.seed)
        info["seconds"] = time.perf_counter() - started
        save(path, {**vae.state_dict(), "scaling_factor": torch.tensor(vae.config.scaling_factor)}, info)
    vae.eval().requires_grad_(False)
    if "reconstruction_error" not in info:
        import numpy as np

        from world.render import SUBJECTS, random_scene, render, subject_photo_scenes

        rng = np.random.default_rng([s.seed, 9])
        ordinary = [render(random_scene(rng)) for _ in range(256)]
        subjects = [render(scene) for name in SUBJECTS for scene in subject_photo_scenes(name, 5, s.seed)]
        info["reconstruction_error"] = {  # mean absolute error in 8-bit levels
            "ordinary": reconstruction_error(vae, ordinary),
            "subjects": reconstruction_error(vae, subjects),
        }
        path.with_suffix(".json").write_text(json.dumps(info))
    return vae, digest, info


def build_evaluator(s: WorldSettings, vae):
    from world.evaluator import Evaluator, held_out_accuracy, train_evaluator

    digest = evaluator_digest(s)
    path = cached("evaluator", digest)
    if path.is_file():
        model = Evaluator()
        model.load_state_dict(load_file(path))
        return model.eval().requires_grad_(False), digest, json.loads(path.with_suffix(".json").read_text())
    started = time.perf_counter()
    model, losses = train_evaluator(s.evaluator_steps, s.evaluator_batch, s.seed, vae=vae)
    info = {
        "seconds": time.perf_counter() - started,
        "final_loss": float(sum(losses[-50:]) / 50),
        # held-out renders (another seed), augmented as in training, and the same through the VAE
        "held_out_accuracy": held_out_accuracy(model, 4096, s.seed + 1000),
        "held_out_accuracy_vae": held_out_accuracy(model, 2048, s.seed + 2000, vae=vae),
    }
    save(path, model.state_dict(), info)
    return model, digest, info


def build_pipeline(s: WorldSettings, vae, tokenizer_dir: Path):
    from diffusers import StableDiffusionXLPipeline

    from world.pretrain import pretrain

    tokenizer = components.write_tokenizer(tokenizer_dir)
    models = components.build_models(len(tokenizer), s.seed, s.unet_width)
    models["vae"] = vae
    pipe = StableDiffusionXLPipeline(
        **models, tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=components.scheduler()
    )
    digest = pretrain_digest(s)
    path = cached("pretrain", digest)
    trained = (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
    prefixes = ("unet.", "text_encoder.", "text_encoder_2.")
    if path.is_file():
        state = load_file(path)
        for prefix, module in zip(prefixes, trained, strict=True):
            module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        info = json.loads(path.with_suffix(".json").read_text())
    else:
        started = time.perf_counter()
        info = pretrain(pipe, s.pretrain)
        info["seconds"] = time.perf_counter() - started
        state = {p + k: v for p, m in zip(prefixes, trained, strict=True) for k, v in m.state_dict().items()}
        save(path, state, info)
    for module in trained:
        module.eval().requires_grad_(False)
    return pipe, digest, info


def save(path: Path, state: dict, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps(info))
