"""Shared fixtures: tiny SDXL-shaped models with random weights, composed configs, the real DreamBooth photos."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from para.run.config import compose_config  # noqa: F401 (re-exported for the tests)

REPO = Path(__file__).resolve().parent.parent
DATA_ROOT = (REPO.parent / "shared" / "dreambooth" / "dataset").resolve()

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_configure(config):
    """Temporary files of this test session (and of the runs it spawns) go to one folder, removed at the end:
    wandb makes module-level temp folders that a SIGKILLed or submitit child never cleans up."""
    os.environ.setdefault("PYTEST_DEBUG_TEMPROOT", tempfile.gettempdir())  # pytest's tmp_path stays where it was
    scratch = tempfile.mkdtemp(prefix="para-tests-")
    config.para_scratch = scratch
    os.environ["TMPDIR"] = scratch
    tempfile.tempdir = None  # re-read TMPDIR


def pytest_collection_modifyitems(config, items):
    """`slurm` / `browser` tests need the real thing: skipped with the install command where it is missing, an
    error where PARA_REQUIRE names the group (CI)."""
    from installed import CHECKS

    required = os.environ.get("PARA_REQUIRE", "").split()
    for group, check in CHECKS.items():
        marked = [item for item in items if item.get_closest_marker(group)]
        reason = check() if marked or group in required else None
        if reason and group in required:
            raise pytest.UsageError(f"PARA_REQUIRE={' '.join(required)}: the {group} tests cannot run: {reason}")
        for item in marked if reason else []:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_unconfigure(config):
    scratch = getattr(config, "para_scratch", None)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


# Overrides that make a full run take seconds: few steps, 1 prompt x 2 images, 2 DDIM steps, random eval nets.
QUICK = [
    "model=tiny",
    "logger=none",
    "steps=4",
    "sample.num_prompts=1",
    "sample.images_per_prompt=2",
    "sample.steps=2",
    "eval.backbones=random",
    f"data.root={DATA_ROOT}",
]


@pytest.fixture(scope="session")
def tiny_pipe_template():
    from para.core.models import build_random_pipeline

    return build_random_pipeline("tiny", seed=0)


@pytest.fixture
def tiny_pipe(tiny_pipe_template):
    """A fresh deep copy per test: methods change the UNet in place."""
    return copy.deepcopy(tiny_pipe_template)


@pytest.fixture
def quick_cfg(tmp_path):
    def make(*overrides: str, run_dir: Path | None = None):
        return compose_config(*QUICK, f"run_dir={run_dir or tmp_path / 'run'}", *overrides)

    return make
