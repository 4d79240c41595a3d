"""What produced a result: git revision, package versions, device. Saved with every run and benchmark."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = (
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "hydra-core",
    "omegaconf",
    "wandb",
    "torchmetrics",
    "open_clip_torch",
    "lpips",
    "pandas",
    "safetensors",
    "numpy",
)
REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_info(device: torch.device | str | None = None) -> dict[str, str | int | None]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info: dict[str, str | int | None] = {"device": str(device), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    info["threads"] = torch.get_num_threads()
    return info


def provenance(device: torch.device | str | None = None) -> dict:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "packages": package_versions(),
        **device_info(device),
        **slurm_info(),
    }


def slurm_info() -> dict[str, str | int]:
    """The SLURM job running this process, if any: its id (array job_task for sweeps), node, and how often SLURM
    requeued it (preemption, `scontrol requeue`, submitit's requeue on a time-out); empty outside SLURM."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    array = (env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID"))
    return {
        "slurm_job_id": "_".join(array) if all(array) else env["SLURM_JOB_ID"],
        "slurm_node": env.get("SLURMD_NODENAME", ""),
        "slurm_restarts": int(env.get("SLURM_RESTART_COUNT", 0)),
    }
