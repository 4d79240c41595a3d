"""Fail before paying (issue 17 items 9 and 11): every input is checked before anything is written or trained,
every problem is listed at once, and dry runs write nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from para.core import trainer
from para.run.runner import execute


def _subject_with_a_broken_photo(tmp_path: Path) -> Path:
    from conftest import DATA_ROOT

    folder = tmp_path / "data" / "dog"
    folder.mkdir(parents=True)
    (folder / "00.jpg").write_bytes((DATA_ROOT / "dog" / "00.jpg").read_bytes())
    (folder / "01.jpg").write_bytes(b"not a photo")
    return tmp_path / "data"


def test_9_every_problem_is_listed_before_anything_trains(quick_cfg, tmp_path, monkeypatch):
    """Item 9: missing evaluation backbones were found after training and sampling, with a traceback."""

    def must_not_train(*_args, **_kwargs):
        raise AssertionError("trained before its inputs were checked")

    monkeypatch.setattr(trainer.Trainer, "train", must_not_train)
    cfg = quick_cfg(
        "eval.backbones=pretrained",
        "eval.dino=nobody/no-such-dino",  # not on disk, not in the cache, and HF_HUB_OFFLINE=1 (conftest)
        "eval.clip_pretrained=no-such-tag",
        "device=cuda:7",
        f"data.root={_subject_with_a_broken_photo(tmp_path)}",
    )
    with pytest.raises(ValueError) as info:  # para.run.preflight.PreflightError
        execute(cfg)
    message = str(info.value)
    for fragment in ("[backbones]", "nobody/no-such-dino", "no-such-tag", "[photos]", "01.jpg", "[device]", "cuda:7"):
        assert fragment in message, fragment
    assert message.startswith("4 problems found before anything ran")
    assert not Path(cfg.run_dir).exists()


def test_the_command_line_checks_many_cells_and_lists_each_problem_once(capsys):
    from para.run import preflight

    common = ["model=tiny", "eval.backbones=random", "logger=none"]
    cells = ["method=para subject=dog", "method=lora subject=cat", "method=para subject=dog method.rank=0"]
    args = [*common, *(a for c in cells for a in ("--cell", c)), "--cell", "method=lora subject=dog device=cuda:9"]
    assert preflight.main(args) == 2
    out, err = capsys.readouterr()
    assert "ok: runs/tiny/para/dog/steps200-seed0 (fresh)" in out and "ok: runs/tiny/lora/cat/steps200-seed0" in out
    assert "2 problems found before anything ran (2 of 4 runs)" in err
    assert "method.rank=0" in err and "cuda:9" in err
    assert preflight.main(common) == 0  # one cell: the overrides alone


def test_disk_and_device_checks(quick_cfg, monkeypatch):
    from collections import namedtuple

    from para.run import checks, preflight
    from para.run.checks import device_problem

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda _path: usage(10, 10, 1000))
    found = preflight.problems(quick_cfg(), Path(quick_cfg().run_dir))
    assert [name for name, _ in found] == ["disk"] and "GiB free" in found[0][1]
    monkeypatch.setattr(checks.os, "access", lambda _path, _mode: False)
    (found,) = preflight.problems(quick_cfg(), Path(quick_cfg().run_dir))
    assert found[0] == "disk" and "cannot write into" in found[1]
    assert device_problem("device", "auto") is None and device_problem("device", "cpu") is None
    assert "not a device" in device_problem("device", "gpu0")
    if not __import__("torch").cuda.is_available():
        assert "no usable CUDA GPU" in device_problem("device", "cuda")


def _snapshot(folder: Path) -> dict[str, int]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_11_make_n_reproduce_table1_writes_nothing():
    """Item 11: `make -n reproduce-table1` ran its $(MAKE) line for real, and with it the table writer."""
    before = _snapshot(REPO / "runs")
    args = ["MODEL=tiny", "SUBJECTS=dog", "SEEDS=0", "METHODS=para", "BACKBONES=random"]
    plan = subprocess.run(["make", "-n", "reproduce-table1", *args], cwd=REPO, capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    assert "para.run.preflight" in plan.stdout and "para.run.worker" in plan.stdout  # the plan is shown
    assert _snapshot(REPO / "runs") == before


def test_11_python_m_eval_dry_run_writes_nothing(tmp_path):
    from test_eval_score import make_run

    from eval.__main__ import main

    run = make_run(tmp_path / "run")
    metrics = (run / "metrics.json").read_bytes()
    cache = tmp_path / "cache"
    assert main([str(run), "--backbones", "random", "--cache-dir", str(cache), "--dry-run"]) == 0
    assert not cache.exists() and (run / "metrics.json").read_bytes() == metrics
    assert sorted(os.listdir(run)) == ["metrics.json", "samples"]


def test_a_later_check_can_be_added(quick_cfg):
    """Other issues add checks (e.g. a resource plan): registered functions run with the cell, in order."""
    from para.run import preflight

    seen = []

    @preflight.check("extra", requires=("config",))
    def extra(cell):
        seen.append(cell.run_dir)
        return ["too big"]

    try:
        cfg = quick_cfg()
        assert preflight.problems(cfg, Path(cfg.run_dir)) == [("extra", "too big")]
        assert seen == [Path(cfg.run_dir)]
    finally:
        preflight.CHECKS[:] = [c for c in preflight.CHECKS if c.name != "extra"]


def test_9_reproduce_table1_checks_every_unfinished_cell_before_the_first_trains(capsys):
    """`make reproduce-table1` runs the preflight over all its unfinished cells first (the exact command make runs,
    here executed in this process)."""
    import shlex

    from para.run import preflight

    args = ["MODEL=tiny", "SUBJECTS=dog cat", "SEEDS=987654", "METHODS=para lora", "BACKBONES=pretrained"]  # unmade
    plan = subprocess.run(["make", "-n", "reproduce-table1", *args], cwd=REPO, capture_output=True, text=True)
    lines = plan.stdout.splitlines()
    first_run = next(i for i, line in enumerate(lines) if "para.run.worker" in line)
    (check,) = [line for line in lines[:first_run] if "-m para.run.preflight" in line]  # before any cell trains
    argv = shlex.split(check)
    assert argv.count("--cell") == 4  # every unfinished cell
    assert preflight.main(argv[argv.index("para.run.preflight") + 1 :]) == 2
    err = capsys.readouterr().err
    assert "(4 of 4 runs)" in err and "[backbones]" in err and "runs/tiny/lora/cat/steps100-seed987654" in err
