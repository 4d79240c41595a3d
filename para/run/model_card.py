"""A model card (`README.md`) for every finished run, in the form of diffusers' DreamBooth scripts.

YAML front matter the Hub reads (`base_model`, `license`, `tags`, `instance_prompt`, `widget` with sample images),
then what was trained, the scores and whether the models behind them were pretrained, how to load the adapter
(this project's API, stock diffusers through the exact LoRA export, ComfyUI) and the command that made the run.
`python -m para.export … --push-to-hub` renders it again for the exported file it uploads.
"""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from omegaconf import DictConfig, OmegaConf

from para.core.data import instance_prompt
from para.core.io import atomic_write_text, read_json
from para.core.models import model_id
from para.export.factors import EXACT, NOT_LOW_RANK
from para.run.folder import CARD_MARK, CARD_NAMES, card_path

CARD_FILE = CARD_NAMES[0]
log = logging.getLogger(__name__)
SCORES = ("dino", "clip_i", "clip_t", "clip_score", "lpips", "ssim")
WIDGET_IMAGES = 4
SDXL_LICENSE = "openrail++"  # SDXL 1.0 base's license; adapters of it inherit its use restrictions
RANDOM_LICENSE = "apache-2.0"  # this project's: a random-weight model carries no one else's weights


@dataclass
class Exported:
    """The exported file a card describes when it is uploaded with it."""

    fmt: str  # lora | kohya | merged
    name: str  # path in the repo
    repo_id: str


def _through_hydra() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


def run_command(cfg: DictConfig) -> str:
    """The command that made the run: Hydra's own overrides when run through `run.py`, else the main choices."""
    from hydra.core.hydra_config import HydraConfig

    if _through_hydra():
        overrides = list(HydraConfig.get().overrides.task)
    else:
        overrides = [f"{k}={v}" for k, v in (("method", cfg.method.name), ("subject", cfg.subject.name))]
        overrides += [f"model={cfg.model.name}", f"steps={cfg.steps}", f"seed={cfg.seed}"]
    return " ".join(["python run.py", *(shlex.quote(o) for o in overrides)])


def base_model_name(cfg: DictConfig) -> str:
    """The base model as the Hub names it: the hub id (or path) the run loaded, without the revision."""
    return model_id(cfg.model).rsplit("@", 1)[0]


def card_data(cfg: DictConfig, run_dir: Path) -> ModelCardData:
    method = cfg.method.name
    pretrained = cfg.model.kind == "pretrained"
    prompts_file = run_dir / "samples" / "prompts.json"
    prompts = read_json(prompts_file)[:WIDGET_IMAGES] if prompts_file.is_file() else []
    widget = [{"text": p["prompt"], "output": {"url": f"samples/{p['images'][0]}"}} for p in prompts if p["images"]]
    return ModelCardData(
        base_model=base_model_name(cfg),
        license=SDXL_LICENSE if pretrained else RANDOM_LICENSE,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        tags=["text-to-image", "diffusers", "sdxl", "para" if method.startswith("para") else method],
        instance_prompt=instance_prompt(cfg.data.prompt_template, cfg.data.token, cfg.subject.class_word),
        widget=widget,
    )


def render_model_card(run_dir: Path, cfg: DictConfig, metrics: dict, exported: Exported | None = None) -> str:
    """The card's text (front matter + body) for a run folder."""
    data = card_data(cfg, run_dir)
    body = [
        f"# {cfg.method.name} adapter: {cfg.subject.name} ({cfg.data.token}) on {data.base_model}",
        "",
        f"{CARD_MARK} (para/run/model_card.py); the run folder's files are the source -->",
        "",
        *_warning(cfg, metrics),
        "## What was trained",
        "",
        *_trained(cfg, metrics, data),
        "",
        "## Scores",
        "",
        *_scores(metrics),
        "",
        "## Use it",
        "",
        *_usage(run_dir, cfg, data, exported),
        "## The command",
        "",
        "```bash",
        run_command(cfg),
        "```",
        "",
        (
            ""
            if _through_hydra()
            else "(The run was started in-process, not by `run.py`: the command above is "
            "rebuilt from its main choices.) "
        )
        + "`config.yaml` in the run folder holds every resolved value; `metrics.json` the loss curve, timings and "
        "provenance (git SHA, package versions, device).",
        "",
    ]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)


def write_model_card(run_dir: Path, cfg: DictConfig, metrics: dict) -> Path:
    """`run_dir/README.md` for a finished run (checked to parse as a Hub model card); `MODEL_CARD.md` when the
    README.md there is a file of the user's, which is never replaced."""
    text = render_model_card(run_dir, cfg, metrics)
    ModelCard(text)  # raises on malformed front matter before anything is written
    path = card_path(run_dir)
    if path.name != CARD_FILE:
        log.warning("%s: README.md there is not a model card of the harness; the card is %s", run_dir, path.name)
    return atomic_write_text(path, text)


def load_run(run_dir: Path) -> tuple[DictConfig, dict]:
    """A run folder's resolved config and metrics, for rendering its card later (e.g. on upload)."""
    return OmegaConf.load(run_dir / "config.yaml"), read_json(run_dir / "metrics.json")


def _warning(cfg: DictConfig, metrics: dict) -> list[str]:
    if cfg.model.kind == "pretrained":
        return []
    return [
        f"> **Random weights.** The base model `{cfg.model.name}` is an SDXL-shaped model with random weights, built "
        "in-process for tests: these images and numbers only show that the code runs. They are not comparable "
        "with any paper.",
        "",
    ]


def _trained(cfg: DictConfig, metrics: dict, data: ModelCardData) -> list[str]:
    method_cfg = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
    info = metrics.get("train_info") or {}
    rows = [
        ("method", f"`{cfg.method.name}` ({json.dumps(method_cfg)})"),
        (
            "base model",
            f"`{model_id(cfg.model)}` ({'pretrained' if cfg.model.kind == 'pretrained' else 'RANDOM'} weights)",
        ),
        ("subject", f"`{cfg.subject.name}` (class {cfg.subject.class_word!r}), photos of the DreamBooth dataset"),
        ("instance prompt", f"`{data.instance_prompt}`"),
        ("steps, seed, resolution", f"{cfg.steps}, {cfg.seed}, {cfg.model.resolution} px"),
        ("optimizer, learning rate", f"{cfg.train.optimizer}, {cfg.method.lr:g}"),
        (
            "trainable parameters",
            f"{metrics.get('trainable_params', '–'):,}" if isinstance(metrics.get("trainable_params"), int) else "–",
        ),
        ("training time", f"{info['wall_seconds']:.1f} s" if info.get("wall_seconds") else "–"),
    ]
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _scores(metrics: dict) -> list[str]:
    scores = metrics.get("scores") or {}
    shown = [(k, scores[k]) for k in SCORES if isinstance(scores.get(k), int | float)]
    if not shown:
        return ["Not scored (`eval.enabled=false` or sampling off)."]
    pretrained = scores.get("backbones_pretrained") or {}
    base = (metrics.get("meta_info") or {}).get("base_weights_pretrained")
    return [
        "| " + " | ".join(k for k, _ in shown) + " |",
        "|" + "---:|" * len(shown),
        "| " + " | ".join(f"{v:.4f}" for _, v in shown) + " |",
        "",
        f"Over {scores.get('n_images', '?')} images of {scores.get('n_prompts', '?')} DreamBench prompts "
        "(docs/evaluation.md). Pretrained weights: base model "
        + ("yes" if base else "**no**")
        + "; evaluation backbones "
        + (", ".join(f"{k} {'yes' if ok else '**no**'}" for k, ok in pretrained.items()) or "not recorded")
        + ".",
    ]


def _usage(run_dir: Path, cfg: DictConfig, data: ModelCardData, exported: Exported | None) -> list[str]:
    method, prompt = cfg.method.name, data.instance_prompt
    if method not in EXACT:
        reason = NOT_LOW_RANK.get(method, "not a low-rank adapter")
        return [f"No exact LoRA form ({reason}): load `adapter.safetensors` with this project (`run.py`).", ""]
    # add_watermarker=False: the run's own samples were drawn without the invisible watermark (para.core.models)
    pipe = (
        f'pipe = StableDiffusionXLPipeline.from_pretrained("{data.base_model}", torch_dtype=torch.float16, '
        "add_watermarker=False)"
    )
    kohya = f"{cfg.subject.name}-{method}-kohya.safetensors"
    comfy = [
        "ComfyUI, A1111/Forge, InvokeAI and kohya's scripts read the `kohya` format "
        f"(`python -m para.export <run folder> --format kohya --out {kohya}`): put the file in "
        "`ComfyUI/models/loras/` and load it with a *Load LoRA* node at strength 1.0 (text encoders: not adapted).",
        "",
    ]
    if exported is not None and exported.fmt == "merged":
        code = [
            "from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel",
            f'unet = UNet2DConditionModel.from_pretrained("{exported.repo_id}", subfolder="{exported.name}")',
            f'pipe = StableDiffusionXLPipeline.from_pretrained("{data.base_model}", unet=unet, add_watermarker=False)',
        ]
        intro = f"`{exported.name}/` is the whole UNet with the adapter merged in: no LoRA support needed."
    elif exported is not None:
        code = ["import torch", "from diffusers import StableDiffusionXLPipeline", pipe]
        code.append(f'pipe.load_lora_weights("{exported.repo_id}", weight_name="{exported.name}")')
        intro = f"`{exported.name}` is the adapter as an exact LoRA at scale 1 (`{exported.fmt}` format)."
    else:
        code = ["import para, torch", "from diffusers import StableDiffusionXLPipeline", pipe]
        code.append(f'handle = para.load_adapter(pipe, "{run_dir / "adapter.safetensors"}")  # handle.remove() undoes')
        intro = (
            "With this project installed (`para.load_adapter`). Without it, export an exact LoRA at scale 1 that "
            f"stock `pipe.load_lora_weights(path)` reads: `python -m para.export {run_dir} --format lora "
            f"--out {cfg.subject.name}-{method}.safetensors`."
        )
    code.append(f'image = pipe("{prompt}").images[0]')
    return [intro, "", "```python", *code, "```", "", *comfy]
