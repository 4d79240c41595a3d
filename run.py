"""Train one method on one DreamBooth subject, sample the evaluation images, score them.

    python run.py method=para subject=dog steps=200           # the paper's PaRa cell (SDXL 1.0 weights)
    python run.py method=lora subject=dog model=tiny steps=20  # offline, random-weight SDXL-shaped model
    python run.py -m method=para,lora subject=dog,cat          # a sweep: one run folder per cell

Everything is composed by Hydra from conf/; see README.md.
"""

from __future__ import annotations

import logging
import sys
import time

import hydra
from omegaconf import DictConfig

from para.core.data import DataError
from para.core.interrupts import RunInterrupted, stop_on_signals
from para.core.io import DiskFull
from para.core.lock import FolderBusy
from para.core.method import AdapterFileError
from para.core.models import ModelLoadError
from para.core.trainer import TrainingError
from para.run.config import register_configs
from para.tracking.sweep import cell_failed

register_configs()
log = logging.getLogger("run")
STARTED_AT = time.time()

# Errors that are the user's to fix: print the message alone, no traceback. (PreflightError and FolderRefused,
# para.run's refusals, are ValueErrors; TrainingError says which setting to change; DiskFull what to free.)
USER_ERRORS = (ModelLoadError, DataError, AdapterFileError, FolderBusy, TrainingError, DiskFull, ValueError)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    return run(cfg)


def run(cfg: DictConfig) -> dict:
    """The run of a composed config, as `python run.py` ends it: a user's error (what is wrong and the way out) with
    exit status 2 and no traceback, a stop signal with 128 + its number. Outside Hydra's main (a config from
    para.run.config.compose_config, as tests/test_bad_inputs.py calls it) the run folder is `cfg.run_dir`."""
    from para.run.folder import run_dir_of
    from para.run.preflight import preflight

    try:
        with stop_on_signals():
            # every input checked before the training stack (diffusers, peft, the eval nets) is even imported:
            # a run that cannot start says why within seconds
            checked = preflight(cfg, run_dir_of(cfg))
        from para.run.runner import execute

        metrics = execute(cfg, checked=checked)
    except RunInterrupted as stop:  # SIGTERM (SLURM preemption, time limit, scancel) or Ctrl-C: stop everything
        _remove_empty_run_dir(cfg)
        log.warning("stopped by %s; re-run the same command to continue", stop.signal_name)
        sys.exit(stop.exit_code)  # 143 for SIGTERM, 130 for Ctrl-C: a sweep stops here too
    except Exception as err:
        _remove_empty_run_dir(cfg)
        if _is_multirun():  # the sweep goes on; para.tracking.sweep.SweepReport lists the failed cells at the end
            return cell_failed(err, traceback=not isinstance(err, USER_ERRORS))
        if not isinstance(err, USER_ERRORS):
            raise
        log.error("%s", err)
        sys.exit(2)
    log.info("run folder: %s (status %s)", _output_dir(cfg), metrics.get("status"))
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

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _output_dir(cfg: DictConfig):
    from para.run.folder import run_dir_of

    return run_dir_of(cfg)  # where the folder is now: a moved run's metrics name the old one


def _remove_empty_run_dir(cfg: DictConfig) -> None:
    """Hydra creates the output folder before the job starts; a run that never began removes the folders made
    for it, never one the user made (para.run.folder.remove_created)."""
    from hydra.core.hydra_config import HydraConfig

    from para.run.folder import remove_created

    if HydraConfig.initialized():  # (outside Hydra nothing made a folder before the run)
        remove_created(_output_dir(cfg), _is_multirun(), STARTED_AT)


if __name__ == "__main__":
    main()
