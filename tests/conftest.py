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
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one thread each, and in the
    os.environ["OMP_NUM_THREADS"] = "1"  # runs they start (more oversubscribes the cores)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


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
    if config.pluginmanager.hasplugin("xdist"):
        # `make test`'s workers (pytest-xdist --dist loadgroup) take a test file at a time, so that its module
        # fixtures are built once, and the files sharing the costly session fixture `export_runs` together.
        for item in items:
            group = "export_runs" if "export_runs" in item.fixturenames else item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_unconfigure(config):
    scratch = getattr(config, "para_scratch", None)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


# The CLIP-score model of random-backbone test runs: torchmetrics' default (ViT-L/14) costs ~4 s to build and ~1 s
# per image here with random weights; ViT-B/32 runs the same code (eval.clip_score) at a tenth of that.
SMALL_CLIP_SCORE = "eval.clip_score_model=openai/clip-vit-base-patch32"
# Overrides that make a full run take seconds: few steps, 1 prompt x 2 images, 2 DDIM steps, random eval nets.
QUICK = [
    "model=tiny",
    "logger=none",
    "steps=4",
    "sample.num_prompts=1",
    "sample.images_per_prompt=2",
    "sample.steps=2",
    "eval.backbones=random",
    SMALL_CLIP_SCORE,
    f"data.root={DATA_ROOT}",
]


# In-process runs of a second or so (the dtype matrix, resource checks): 32 px, 2 steps, one image scored.
FAST = [
    "model=tiny",
    "model.resolution=32",
    "logger=none",
    "steps=2",
    "sample.num_prompts=1",
    "sample.images_per_prompt=1",
    "sample.steps=2",
    "eval.backbones=random",
    "eval.lpips_size=64",
    SMALL_CLIP_SCORE,
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


# Finished tiny runs of the methods with an exact LoRA form (tests/test_export.py, tests/test_model_card.py).
EXPORT_RUNS = {
    "para": ["method=para"],
    "para_cat": ["method=para", "subject=cat", "data.token=zwx", "seed=1", "method.rank=2"],
    "para_authors": ["method=para_authors", "method.lr=1e-2"],
    "lora": ["method=lora", "method.lr=1e-2"],  # B starts at 0: a high rate gives it a visible delta in 4 steps
}


@pytest.fixture(scope="session")
def export_runs(tmp_path_factory) -> dict[str, Path]:
    """Run folders (4 steps, 1 prompt x 1 image, not scored), trained once per test session."""
    from para.run.runner import execute

    root = tmp_path_factory.mktemp("export-runs")
    for name, overrides in EXPORT_RUNS.items():
        quick = [o for o in QUICK if not o.startswith("sample.images_per_prompt")]
        quick += ["eval.enabled=false", "sample.images_per_prompt=1"]
        execute(compose_config(*quick, f"run_dir={root / name}", *overrides))
    return {name: root / name for name in EXPORT_RUNS}


@pytest.fixture
def shared_tiny(monkeypatch, tiny_pipe_template):
    """In-process runs of `model=tiny` get a copy of the session's tiny pipeline instead of building their own
    (the same weights: seed 0). Tokenizers hold no state a run changes and are shared (copying them costs half)."""
    from para.core import models

    def build(kind: str, seed: int = 0):
        assert (kind, seed) == ("tiny", 0), "shared_tiny serves model=tiny with model.init_seed=0 only"
        parts = tiny_pipe_template.components.items()
        copies = {k: v if k.startswith("tokenizer") else copy.deepcopy(v) for k, v in parts}
        pipe = type(tiny_pipe_template)(**copies, **models.NO_WATERMARK)
        pipe.register_to_config(_name_or_path=tiny_pipe_template.name_or_path)  # as build_random_pipeline names it
        return pipe

    monkeypatch.setattr(models, "build_random_pipeline", build)


def pytest_addoption(parser):
    parser.addoption(
        "--mutation",
        default=None,
        help="run the session with tests/mutations.py's planted harness bugs, comma-separated (docs/world.md)",
    )


@pytest.fixture(scope="session", autouse=True)
def planted_mutation(request):
    """`--mutation NAME[,NAME...]`: the whole session runs with those harness bugs in place (this process only)."""
    import contextlib

    option = request.config.getoption("--mutation")
    if not option:
        yield None
        return
    from mutations import MUTATIONS

    names = option.split(",")
    if unknown := [n for n in names if n not in MUTATIONS]:
        raise pytest.UsageError(f"--mutation {','.join(unknown)}: expected names from {sorted(MUTATIONS)}")
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(MUTATIONS[name]())
        yield names


@pytest.fixture
def stand_in_watermarker(monkeypatch):
    """As if `invisible_watermark` were installed (SDXL's model card tells users to install it): diffusers then gives
    every SDXL pipeline built without `add_watermarker=False` a watermarker, here this stand-in."""
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl as sdxl

    class StandIn:
        def apply_watermark(self, images):
            raise AssertionError("a sample was watermarked")

    monkeypatch.setattr(sdxl, "is_invisible_watermark_available", lambda: True)
    monkeypatch.setattr(sdxl, "StableDiffusionXLWatermarker", StandIn, raising=False)
    return StandIn
