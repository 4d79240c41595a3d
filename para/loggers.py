"""Run loggers: a local JSON-lines log (always) and Weights & Biases (`logger=wandb`).

Keys are namespaced: `train/loss`, `eval/clip_t`, `params/trainable`. The W&B run is finished in a `finally`
by the caller, also when the run crashes (with a non-zero exit code, so the dashboard shows it failed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Protocol

from PIL import Image


class RunLogger(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def log_images(self, key: str, images: list[Image.Image], captions: list[str], step: int) -> None: ...
    def summary(self, values: dict[str, Any]) -> None: ...
    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None: ...
    def log_artifact(self, path: Path, name: str, kind: str, metadata: dict[str, Any]) -> None: ...
    def finish(self, exit_code: int = 0) -> None: ...


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


class WandbLogger:
    """W&B run: group = method, tags = subject / steps / seed, name = the run folder."""

    def __init__(self, cfg: Any, run_dir: Path, config_dict: dict[str, Any]):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode,
            group=cfg.method.name, job_type="train",
            name=str(run_dir).replace("/", "_"), dir=str(run_dir), config=config_dict,
            tags=[f"subject:{cfg.subject.name}", f"steps:{cfg.steps}", f"seed:{cfg.seed}", f"model:{cfg.model.name}"],
            reinit="finish_previous",
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_images(self, key: str, images: list[Image.Image], captions: list[str], step: int) -> None:
        self.run.log({key: [self.wandb.Image(im, caption=c) for im, c in zip(images, captions, strict=True)]}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        wrapped = [[self.wandb.Image(v) if isinstance(v, Image.Image) else v for v in row] for row in rows]
        self.run.log({key: self.wandb.Table(columns=columns, data=wrapped)})

    def log_artifact(self, path: Path, name: str, kind: str, metadata: dict[str, Any]) -> None:
        artifact = self.wandb.Artifact(name=name, type=kind, metadata=metadata)
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


class MultiLogger:
    """Fans every call out to several loggers."""

    def __init__(self, loggers: list[Any]):
        self.loggers = loggers

    def __getattr__(self, name: str):
        def call(*args: Any, **kwargs: Any) -> None:
            for logger in self.loggers:
                getattr(logger, name)(*args, **kwargs)

        return call


def build_logger(cfg: Any, run_dir: Path, config_dict: dict[str, Any]) -> MultiLogger:
    loggers: list[Any] = [JsonlLogger(run_dir / "log.jsonl")]
    if cfg.logger.name == "wandb":
        loggers.append(WandbLogger(cfg, run_dir, config_dict))
    return MultiLogger(loggers)
