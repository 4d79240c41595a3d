"""Train one method on one DreamBooth subject, sample the evaluation images, score them.

    python run.py method=para subject=dog steps=200           # the paper's PaRa cell (SDXL 1.0 weights)
    python run.py method=lora subject=dog model=tiny steps=20  # offline, random-weight SDXL-shaped model
    python run.py -m method=para,lora subject=dog,cat          # a sweep: one run folder per cell

Everything is composed by Hydra from conf/; see README.md.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from para.core.data import DataError
from para.core.method import AdapterFileError
from para.core.models import ModelLoadError
from para.run.config import register_configs
from para.tracking.sweep import cell_failed

register_configs()
log = logging.getLogger("run")

# Errors that are the user's to fix: print the message alone, no traceback.
USER_ERRORS = (ModelLoadError, DataError, AdapterFileError, ValueError)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    from para.run.runner import execute

    try:
        metrics = execute(cfg)
    except Exception as err:
        _remove_empty_run_dir()
        if _is_multirun():  # the sweep goes on; para.tracking.sweep.SweepReport lists the failed cells at the end
            return cell_failed(err, traceback=not isinstance(err, USER_ERRORS))
        if not isinstance(err, USER_ERRORS):
            raise
        log.error("%s", err)
        sys.exit(2)
    log.info("run folder: %s (status %s)", metrics.get("run_dir"), metrics.get("status"))
    _print_scores(metrics)
    return metrics


def _print_scores(metrics: dict) -> None:
    scores = metrics.get("scores") or {}
    shown = {
        k: scores[k] for k in ("dino", "clip_i", "clip_t", "clip_score", "lpips", "ssim") if scores.get(k) is not None
    }
    if shown:
        log.info("scores: %s", "  ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    random_parts = [k for k, ok in (scores.get("backbones_pretrained") or {}).items() if not ok]
    if random_parts or not metrics.get("meta_info", {}).get("base_weights_pretrained", True):
        log.warning(
            "RANDOM WEIGHTS (base model: %s; eval backbones: %s): these numbers test the plumbing only and are "
            "not comparable with any paper.",
            metrics.get("model"),
            ", ".join(random_parts) or "pretrained",
        )


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


def _remove_empty_run_dir() -> None:
    """Hydra creates the output folder before the job starts; leave nothing behind for a run that never began."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir)
    while out.is_dir() and not any(out.iterdir()) and out != Path.cwd():
        out.rmdir()
        out = out.parent


if __name__ == "__main__":
    main()
