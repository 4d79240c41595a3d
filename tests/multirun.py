"""Running `python run.py -m ...` sweeps from tests (tests/test_sweeps.py, tests/test_slurm.py), with every output
under a temporary folder, and the small fixtures those sweeps use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import DATA_ROOT, REPO

# Cells that take seconds: 2 training steps, no sampling, no scoring; resume=true keeps a prepared folder.
FAST = ["model=tiny", "steps=2", "logger=none", "sample.enabled=false", "eval.enabled=false", "resume=true"]


def multirun_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "WANDB_DATA_DIR": str(tmp_path / "wandb-data"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def multirun_cmd(tmp_path: Path, *args: str, run_dir: str | None = None) -> list[str]:
    """The command: run folders (default `<tmp>/runs/<method>/<subject>`), sweep records and Hydra's
    multirun.yaml all under tmp_path."""
    run_dir = run_dir or f"{tmp_path}/runs/${{method.name}}/${{subject.name}}"
    return [sys.executable, "run.py", "-m", *args, f"run_dir={run_dir}", f"hydra.sweep.dir={tmp_path}",
            f"hydra.callbacks.sweep_report.records_dir={tmp_path}/sweeps"]  # fmt: skip


def multirun(
    tmp_path: Path, *args: str, timeout: int = 600, run_dir: str | None = None
) -> subprocess.CompletedProcess:
    cmd = multirun_cmd(tmp_path, *args, run_dir=run_dir)
    return subprocess.run(cmd, cwd=REPO, env=multirun_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def break_cell(run_dir: Path, *overrides: str) -> None:
    """A preempted cell (of `overrides`) whose adapter file got truncated: continuing it fails after its run folder
    exists. The folder is the harness's (its marker, its config), so the run continues it rather than refuse it."""
    from conftest import compose_config
    from omegaconf import OmegaConf

    from para.run.folder import write_marker

    run_dir.mkdir(parents=True)
    write_marker(run_dir)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(*overrides), resolve=True))
    (run_dir / "metrics.json").write_text(json.dumps({"status": "running", "stage": "trained"}))
    (run_dir / "adapter.safetensors").write_bytes(b"truncated")


def data_root(tmp_path: Path, *subjects: str) -> Path:
    """A DreamBooth-layout folder holding only `subjects` (links to the real photos)."""
    root = tmp_path / "data"
    root.mkdir()
    for subject in subjects:
        (root / subject).symlink_to(DATA_ROOT / subject)
    return root


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
