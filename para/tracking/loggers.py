"""Run loggers: a local JSON-lines log (always) and Weights & Biases (`logger=wandb`).

Keys are namespaced: `train/loss`, `eval/clip_t`, `params/trainable`. The W&B run is finished in a `finally`
by the caller, also when the run crashes (with a non-zero exit code, so the dashboard shows it failed).
What a W&B run holds (docs/cluster.md describes the dashboard that reads it):

- config: the resolved run config; summary: `params/*`, `eval/*` (the run's final scores);
- history: `train/{loss,lr,grad_norm,step_seconds,it_per_s}`, `validation/samples` (one grid image per
  `logger.sample_every` steps, fixed prompts and seeds) and `eval/per_prompt` (a table: prompt, image grid, scores);
- artifact `adapter-<run name>` (type `adapter`): the adapter file with its own metadata (files over
  `UPLOAD_LIMIT_BYTES`, i.e. DreamBooth's full UNet, as a `file://` reference instead of an upload).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

UPLOAD_LIMIT_BYTES = 1 << 30  # adapter files above this are logged as references to the local file


class RunLogger(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def log_images(self, key: str, images: list[Image.Image], captions: list[str], step: int) -> None: ...
    def summary(self, values: dict[str, Any]) -> None: ...
    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None: ...
    def log_artifact(self, path: Path, name: str, kind: str, metadata: dict[str, Any]) -> None: ...
    def finish(self, exit_code: int = 0) -> None: ...


def run_name(run_dir: Path) -> str:
    """`tiny/para/dog/steps20-seed0` for `runs/tiny/para/dog/steps20-seed0`: the run folder below `runs/`."""
    parts = [p for p in Path(run_dir).parts if p != Path(run_dir).anchor]
    if "runs" in parts:
        return "/".join(parts[len(parts) - parts[::-1].index("runs") :])
    return "/".join(parts[-3:])  # a folder outside runs/ (tests): its last three levels


def artifact_name(run_dir: Path) -> str:
    """`adapter-tiny-para-dog-steps20-seed0`: one artifact per run folder (W&B allows [A-Za-z0-9._-])."""
    return "adapter-" + re.sub(r"[^A-Za-z0-9._-]+", "-", run_name(run_dir)).strip("-")


def image_grid(images: list[Image.Image], cols: int | None = None) -> Image.Image:
    """One image holding `images` in a row (or `cols` per row): one W&B frame per step, not one per prompt."""
    from diffusers.utils import make_image_grid

    cols = cols or len(images)
    rows = -(-len(images) // cols)
    blank = Image.new("RGB", images[0].size)
    return make_image_grid([*images, *[blank] * (rows * cols - len(images))], rows=rows, cols=cols)


def with_rate(metrics: dict[str, float]) -> dict[str, float]:
    """Adds `train/it_per_s` (training steps per second, from the step's own wall time)."""
    seconds = metrics.get("train/step_seconds")
    return {**metrics, "train/it_per_s": 1.0 / seconds} if seconds else metrics


class JsonlLogger:
    """Appends one JSON object per event to `<run>/log.jsonl`; images are referenced, not embedded."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), **record}, default=str) + "\n")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._write({"step": step, **metrics})

    def log_images(self, key: str, images: list[Image.Image], captions: list[str], step: int) -> None:
        folder = self.path.parent / "validation"
        folder.mkdir(exist_ok=True)
        names = []
        for i, image in enumerate(images):
            name = f"{key.replace('/', '_')}_step{step:06d}_{i}.png"
            image.save(folder / name)
            names.append(name)
        self._write({"step": step, key: names, "captions": captions})

    def summary(self, values: dict[str, Any]) -> None:
        self._write({"summary": values})

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        self._write({"table": key, "columns": columns, "rows": len(rows)})

    def log_artifact(self, path: Path, name: str, kind: str, metadata: dict[str, Any]) -> None:
        self._write({"artifact": name, "type": kind, "path": str(path)})

    def finish(self, exit_code: int = 0) -> None:
        self._write({"finished": True, "exit_code": exit_code})

    def info(self) -> dict[str, Any]:
        return {}


class WandbLogger:
    """W&B run: group = method, tags = subject / steps / seed / model, name = the run folder below `runs/`.

    `start` begins (or, given `resume_id`, continues) a run folder's W&B run; `reopen` continues a finished one.
    """

    def __init__(self, run: Any):
        import wandb

        self.wandb, self.run = wandb, run

    @classmethod
    def start(cls, cfg: Any, run_dir: Path, config_dict: dict[str, Any], resume_id: str | None = None) -> WandbLogger:
        import wandb

        return cls(
            wandb.init(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                mode=cfg.logger.mode,
                group=cfg.method.name,
                job_type="train",
                name=run_name(run_dir),
                dir=str(run_dir),
                config=config_dict,
                tags=[
                    f"subject:{cfg.subject.name}",
                    f"steps:{cfg.steps}",
                    f"seed:{cfg.seed}",
                    f"model:{cfg.model.name}",
                ],
                id=resume_id,
                resume="allow" if resume_id else None,
                reinit="finish_previous",  # multirun cells in one process: never log into the previous cell's run
            )
        )

    @classmethod
    def reopen(cls, info: dict[str, Any], run_dir: Path) -> WandbLogger:
        """Continue a finished run's W&B run (`info`: the `wandb` entry of its metrics.json), e.g. to replace its
        scores after re-scoring; offline runs stay offline (`make wandb-sync` uploads the continuation too)."""
        import wandb

        return cls(
            wandb.init(
                project=info["project"],
                entity=info.get("entity"),
                id=info["id"],
                resume="allow",
                dir=str(run_dir),
                mode="offline" if info.get("offline") else None,
                reinit="finish_previous",
            )
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_images(self, key: str, images: list[Image.Image], captions: list[str], step: int) -> None:
        self.run.log(
            {key: [self.wandb.Image(im, caption=c) for im, c in zip(images, captions, strict=True)]}, step=step
        )

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        wrapped = [[self.wandb.Image(v) if isinstance(v, Image.Image) else v for v in row] for row in rows]
        self.run.log({key: self.wandb.Table(columns=columns, data=wrapped)})

    def log_artifact(self, path: Path, name: str, kind: str, metadata: dict[str, Any]) -> None:
        artifact = self.wandb.Artifact(name=name, type=kind, metadata=metadata)
        if Path(path).stat().st_size > UPLOAD_LIMIT_BYTES:
            # DreamBooth saves the whole UNet (~5 GB in bf16 for SDXL): record it by path and checksum, no upload
            artifact.add_reference(Path(path).resolve().as_uri())
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)

    def info(self) -> dict[str, Any]:
        """Where this run lives, for metrics.json (`wandb sync <dir>` uploads an offline run later)."""
        return {
            "wandb": {
                "id": self.run.id,
                "name": self.run.name,
                "project": self.run.project,
                "entity": self.run.entity or None,
                "offline": self.run.offline,
                "dir": str(Path(self.run.dir).resolve().parent),
                "url": self.run.url,
            }
        }


class MultiLogger:
    """Fans every call out to several loggers."""

    def __init__(self, loggers: list[Any]):
        self.loggers = loggers

    def __getattr__(self, name: str):
        def call(*args: Any, **kwargs: Any) -> None:
            for logger in self.loggers:
                getattr(logger, name)(*args, **kwargs)

        return call

    def info(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for logger in self.loggers:
            merged.update(logger.info())
        return merged


def build_logger(cfg: Any, run_dir: Path, config_dict: dict[str, Any], previous: dict | None = None) -> MultiLogger:
    """JSON lines always; W&B with `logger=wandb`. `previous`: the metrics.json being resumed, if any."""
    loggers: list[Any] = [JsonlLogger(run_dir / "log.jsonl")]
    if cfg.logger.name == "wandb":
        resume_id = (previous or {}).get("wandb", {}).get("id") if cfg.resume else None
        loggers.append(WandbLogger.start(cfg, run_dir, config_dict, resume_id))
    return MultiLogger(loggers)


def log_scores(logger: Any, run_dir: Path, scores: dict[str, Any], columns: Sequence[str]) -> None:
    """Final scores as `eval/*` summary values, and a per-prompt table (prompt, its images as one grid, and the
    score `columns`: the run's scoring protocol's, e.g. DreamBench's or the world's)."""
    logger.summary({f"eval/{k}": v for k, v in scores.items() if isinstance(v, int | float | bool)})
    per_prompt = scores.get("per_prompt") or []
    if not per_prompt:
        return
    samples = run_dir / "samples"
    images = {e["prompt_index"]: e["images"] for e in json.loads((samples / "prompts.json").read_text())}
    rows = []
    for entry in per_prompt:
        grid = image_grid([open_image(samples / name) for name in images[entry["prompt_index"]]])
        rows.append([entry["prompt_index"], entry["prompt"], grid, *(entry.get(k) for k in columns)])
    logger.log_table("eval/per_prompt", ["prompt_index", "prompt", "images", *columns], rows)


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
