"""Faults of the bad-input suite (cases in tests/bad_inputs/faults.py, listed in docs/troubleshooting.md): a full
disk and a nan loss end in `status: failed` with the message and no partial file; SIGTERM while sampling ends in
`interrupted` and the same command finishes the run; `make plan` with bad arguments answers like the plan cases."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
from bad_inputs import Case
from bad_inputs.faults import FAULTS, MAKE, SIGNAL_CASE
from bad_inputs.runner import RUN, assert_answer, call_main, call_run, fill, with_defaults
from conftest import REPO


@pytest.mark.parametrize("c", FAULTS, ids=[c.id for c in FAULTS])
def test_fault(c: Case, tmp_path, monkeypatch, capsys, caplog, shared_tiny):
    extra = c.setup(tmp_path, monkeypatch)
    code = call_run([fill(a, tmp_path) for a in with_defaults(RUN, extra)])
    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    assert_answer(output, code, c.code, [fill(s, tmp_path) for s in c.says], c.way)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    leftovers = [p.name for p in (tmp_path / "run").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers and not list((tmp_path / "run").rglob(".step*"))


def test_fault_sigterm_while_sampling(tmp_path, monkeypatch, capsys, caplog, shared_tiny):
    from para.core import sampling

    c, saved = SIGNAL_CASE, []
    save = sampling._save_png

    def save_then_sigterm(image, path):
        save(image, path)
        saved.append(path.name)
        if len(saved) == 1:  # a real signal, delivered to this process between two images
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(sampling, "_save_png", save_then_sigterm)
    argv = [fill(a, tmp_path) for a in with_defaults(RUN, list(c.argv))]
    code = call_run(argv)
    captured = capsys.readouterr()
    assert_answer(captured.out + captured.err + caplog.text, code, c.code, c.says, c.way)
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "interrupted"
    kept = (run_dir / "samples" / saved[0]).read_bytes()
    monkeypatch.setattr(sampling, "_save_png", save)
    assert call_run(argv) == 0  # the same command continues
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "finished"
    assert (run_dir / "samples" / saved[0]).read_bytes() == kept
    assert sorted(p.name for p in (run_dir / "samples").glob("*.png")) == ["p00_i00.png", "p00_i01.png"]


@pytest.mark.parametrize("c", MAKE, ids=[c.id for c in MAKE])
def test_make(c: Case, tmp_path, capsys):
    """make's recipe, as `make -n` prints it (the stamp of an installed .venv is taken as made), is `python -m
    para.run.plan <PLAN_ARGS>`: that command then answers as the plan cases do (make stops with exit 2 after it)."""
    import shlex

    from para.run.plan import main

    stamp = os.path.join(os.environ.get("VENV", ".venv"), ".installed")
    plan = subprocess.run(["make", "-n", "-o", stamp, *(fill(a, tmp_path) for a in c.argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    (line,) = [line for line in plan.stdout.splitlines() if "-m para.run.plan" in line]
    argv = shlex.split(line)
    code = call_main(main, argv[argv.index("para.run.plan") + 1 :])
    captured = capsys.readouterr()
    assert_answer(captured.out + captured.err, code, c.code, c.says, c.way)
    assert not (tmp_path / "plan").exists()
