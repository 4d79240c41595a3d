"""Processes that meet (issue 21) and signals that stop a run (issue 17 item 5), through the real `run.py`.

Slow: each `run.py` process imports torch, diffusers and the eval backbones (10-30 s on 2 busy cores).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICK, REPO
from safetensors.torch import load_file

from para.run.config import compose_config
from para.run.runner import execute

pytestmark = pytest.mark.slow

RUN = [*QUICK, "method=para", "subject=dog", "steps=6", "train.log_every=1"]
PRIOR = ["train.prior_loss_weight=1", "train.num_class_images=2"]  # class images: a cache every cell shares


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PARA_CACHE": str(tmp_path / "para-cache")}


def _start(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    """`python run.py` from `tmp_path/work`: its runs/.cache/eval and runs/class_images are the shared caches."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(REPO / "run.py"), *overrides],
        cwd=work,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _oracle(tmp_path: Path, *overrides: str) -> dict:
    """The adapter of one undisturbed run of the same settings, trained in this process."""
    run_dir = tmp_path / "oracle"
    execute(compose_config(*RUN, *overrides, f"run_dir={run_dir}", f"train.class_images_dir={tmp_path / 'oc'}"))
    return load_file(run_dir / "adapter.safetensors")


def _assert_same(adapter: Path, oracle: dict) -> None:
    got = load_file(adapter)
    assert got.keys() == oracle.keys()
    assert max((got[k] - oracle[k]).abs().max().item() for k in got) < 1e-5


def test_four_processes_on_one_folder_one_trains_the_others_wait_nothing_is_corrupt(tmp_path):
    """Four processes start at once on one run folder, and a fifth on another folder with the same settings,
    sharing the class-image and real-photo embedding caches: exactly one of the four trains, the other three wait
    for it and keep its finished run, and every file is whole."""
    oracle = _oracle(tmp_path, *PRIOR)
    shared = [*RUN, *PRIOR, "lock_wait=900"]
    same = [_start(tmp_path, *shared, f"hydra.run.dir={tmp_path / 'run'}") for _ in range(4)]
    beside = _start(tmp_path, *shared, f"hydra.run.dir={tmp_path / 'beside'}")
    outputs = [p.communicate(timeout=1200)[0] for p in [*same, beside]]
    assert all(p.returncode == 0 for p in [*same, beside]), "\n\n".join(o[-2000:] for o in outputs)

    trained = [o for o in outputs[:4] if "from step 0" in o]
    kept = [o for o in outputs[:4] if "holds a finished run with these settings; kept as is" in o]
    assert len(trained) == 1 and len(kept) == 3, [o[-600:] for o in outputs[:4]]
    assert any("is in use by PID" in o for o in kept)  # they met (one starved of CPU may arrive after the end)

    for run_dir in (tmp_path / "run", tmp_path / "beside"):
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["status"] == "finished" and metrics["scores"]["n_images"] == 2
        assert not (run_dir / ".para-lock").exists()
        _assert_same(run_dir / "adapter.safetensors", oracle)
    caches = tmp_path / "work" / "runs"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")], "temporary files left behind"
    for entry in (caches / ".cache" / "eval").iterdir():
        assert load_file(entry)["embeddings"].shape[0] == 5  # the dog's 5 photos, whole
    (class_images,) = (caches / "class_images" / "tiny" / "dog").iterdir()
    assert sorted(p.name for p in class_images.iterdir()) == ["p00_i00.png", "p00_i01.png", "prompts.json"]


def test_sigterm_exits_143_records_interrupted_and_the_same_command_continues(tmp_path):
    """What SLURM does on preemption and time limit: SIGTERM, then SIGKILL 30 s later."""
    oracle = _oracle(tmp_path, "steps=40", "sample.enabled=false", "eval.enabled=false")
    command = [*RUN, "steps=40", "sample.enabled=false", "eval.enabled=false", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = _start(tmp_path, *command)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.monotonic() + 600
    while not (log.is_file() and len(log.read_text().splitlines()) >= 5) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, out[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["signal"] == "SIGTERM"
    saved = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert saved and int(saved[-1].name[4:]) >= 5 and "re-run the same command to continue" in out

    again = _start(tmp_path, *command)
    out = again.communicate(timeout=600)[0]
    assert again.returncode == 0, out[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["train_info"]["resumed_from"] == int(saved[-1].name[4:])
    _assert_same(tmp_path / "run" / "adapter.safetensors", oracle)
