"""The long tail of bad input (issue 24): every case of tests/bad_inputs/ is run in this process as the user types it,
and must answer with its exit code, no traceback, words naming the problem and a way out, and nothing of the user's
changed on disk (no run folder left saying `running`). docs/troubleshooting.md lists every case.

Faults that need more than arguments (a full disk, a signal while sampling, a loss that turns nan) are the FAULTS
below; `make` goes through a real process (MAKE). Settings' ranges are also tried with Hypothesis.
"""

from __future__ import annotations

import copy
import errno
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from bad_inputs import Case, case, cli, folders, tools
from bad_inputs.setups import DATA_ROOT
from conftest import FAST, REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CASES: list[Case] = [*cli.CASES, *folders.CASES, *tools.CASES]

# What every `run` case adds before its own arguments (a case's own value for a key wins): conftest's FAST tiny run
# (32 px, 2 steps, one image) without scoring or resource plan; its run folder is {tmp}/run.
RUN = [*FAST, "eval.enabled=false", "plan.check=false", "hydra.run.dir={tmp}/run"]
# What the cases copy (`uses`): a finished tiny PaRa run trained with RUN's settings, and adapter folders of the
# methods without a LoRA form (their config.yaml and an adapter.safetensors whose trained tensors are random, so that
# every layer's change is far from zero), made once per session.
ADAPTERS = ("dreambooth", "loha", "svdiff")


def fill(text: str, tmp: Path) -> str:
    for name, value in (("{tmp}", tmp), ("{data}", DATA_ROOT), ("{root}", REPO)):
        text = text.replace(name, str(value))
    return text


def with_defaults(defaults: list[str], own: list[str]) -> list[str]:
    """`defaults` less the keys `own` sets, then `own` (Hydra refuses a key given twice)."""
    keys = {a.split("=", 1)[0].lstrip("+~") for a in own if "=" in a}
    return [d for d in defaults if d.split("=", 1)[0] not in keys] + own


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_pipe_template) -> dict[str, Path]:
    import torch
    from omegaconf import OmegaConf

    from para.core import models
    from para.core.models import model_id
    from para.run.config import compose_config
    from para.run.registry import METHODS
    from para.run.runner import execute

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:  # the session's tiny pipeline, copied (conftest.shared_tiny)
        patch.setattr(models, "build_random_pipeline", lambda kind, seed=0: copy.deepcopy(tiny_pipe_template))
        execute(compose_config(*(fill(a, root) for a in RUN[:-1]), f"run_dir={root / 'para'}"))
    for name in ADAPTERS:
        cfg = compose_config(*(fill(a, root) for a in RUN[:-1]), f"method={name}", f"run_dir={root / name}")
        unet = copy.deepcopy(tiny_pipe_template.unet)
        method = METHODS[name](cfg.method, model_id(cfg.model))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in method.attach(unet):
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
        (root / name).mkdir()
        (root / name / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        method.save(unet, root / name / "adapter.safetensors")
    return {name: root / name for name in ("para", *ADAPTERS)}


# --- calling a command in this process --------------------------------------------------------------------------


def call_run(argv: list[str]) -> int:
    """run.py's `run` on the config Hydra's compose API makes of `argv` (`hydra.run.dir=` as `run_dir=`)."""
    import run as run_py
    from para.run.config import compose_config

    argv = [a.replace("hydra.run.dir=", "run_dir=", 1) if a.startswith("hydra.run.dir=") else a for a in argv]
    try:
        run_py.run(compose_config(*argv))
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1


def call_run_py(argv: list[str], monkeypatch) -> int:
    """`python run.py <argv>`: run.py as `__main__` (Hydra finds conf/ beside it) with sys.argv, as the shell
    would call it."""
    import runpy

    from hydra.core.global_hydra import GlobalHydra

    monkeypatch.setattr(sys, "argv", ["run.py", *argv])
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        runpy.run_path(str(REPO / "run.py"), run_name="__main__")
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    finally:  # Hydra configured logging for the job: give the next command the test's own again
        logging.root.handlers[:], logging.root.level = handlers, level
        GlobalHydra.instance().clear()


def call_main(main, argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's usage errors
        return stop.code if isinstance(stop.code, int) else 1


def mains():
    from eval.__main__ import main as eval_main
    from para.export.__main__ import main as export_main
    from para.run.plan import main as plan_main
    from para.run.preflight import main as preflight_main

    return {"export": export_main, "eval": eval_main, "plan": plan_main, "preflight": preflight_main}


def fresh_log_streams() -> None:
    """Libraries' log handlers made while an earlier test captured stderr still write to that closed stream (a
    `--- Logging error ---` with a traceback that no user sees): point them at this test's stderr."""
    loggers = [logging.root, *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    for handler in (h for logger in loggers for h in logger.handlers):
        if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
            handler.stream = sys.stderr  # (setStream would flush the closed one first)
            handler.__dict__.pop("flush", None)  # diffusers binds the old stream's flush to its handler


def command(c: Case, argv: list[str], monkeypatch) -> int:
    fresh_log_streams()
    if c.tool == "run":
        return call_run_py(argv, monkeypatch) if c.hydra_main or c.code == 1 else call_run(argv)
    return call_main(mains()[c.tool], argv)


# --- what is on disk --------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: its kind and, for files, a digest of its bytes."""
    state = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            state[str(path.relative_to(folder))] = f"link {os.readlink(path)}"
        elif path.is_dir():
            state[str(path.relative_to(folder))] = "folder"
        else:
            state[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def changed(before: dict, after: dict) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def statuses(folder: Path) -> dict[str, str]:
    found = {}
    for path in folder.rglob("metrics.json"):
        try:
            found[str(path.relative_to(folder))] = json.loads(path.read_text()).get("status")
        except (ValueError, AttributeError, OSError):
            pass  # a metrics.json the case made unreadable on purpose
    return found


def assert_answer(output: str, code: int, want_code: int, says, way, absent=()) -> None:
    assert code == want_code, f"exit {code}, expected {want_code}:\n{output[-3000:]}"
    assert "Traceback (most recent call last)" not in output, output[-3000:]
    for fragment in (*says, *way):
        assert fragment in output, f"{fragment!r} is not in the output:\n{output[-3000:]}"
    for fragment in absent:
        assert fragment not in output, f"{fragment!r} is in the output:\n{output[-3000:]}"


# --- the table --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_case(c: Case, tmp_path, request, monkeypatch, capsys, caplog, shared_tiny):
    caplog.set_level(logging.INFO)
    for name in c.uses:
        shutil.copytree(request.getfixturevalue("trained")[name], tmp_path / name, symlinks=True)
    if c.setup:
        c.setup(tmp_path)
    before = snapshot(tmp_path)
    argv = [fill(a, tmp_path) for a in (with_defaults(RUN, list(c.argv)) if c.tool == "run" else c.argv)]
    code = command(c, argv, monkeypatch)
    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    says, way = ([fill(f, tmp_path) for f in fragments] for fragments in (c.says, c.way))
    assert_answer(output, code, c.code, says, way, c.absent)
    unexpected = [k for k in changed(before, snapshot(tmp_path)) if not any(fnmatch.fnmatch(k, w) for w in c.writes)]
    assert not unexpected, f"changed on disk: {unexpected}"
    assert "running" not in statuses(tmp_path).values(), statuses(tmp_path)
    if c.check:
        c.check(tmp_path, output)


def test_the_trained_runs_are_never_changed(trained):
    """Every case works on copies: the session's run still says finished, the adapters are whole."""
    from para.core.method import safetensors_problem

    assert json.loads((trained["para"] / "metrics.json").read_text())["status"] == "finished"
    assert all(safetensors_problem(folder / "adapter.safetensors") is None for folder in trained.values())


# --- faults -----------------------------------------------------------------------------------------------------


def full_disk(monkeypatch, run_dir: Path, partial_writer: str) -> None:
    """A disk that fills up while `partial_writer` (module:function, a tensor-file writer) writes: the partial
    file takes the last free space, so nothing can be written until it is gone (as on a real full disk)."""
    import importlib

    from para.core import io

    module, name = partial_writer.split(":")
    module = importlib.import_module(module)

    def fills_the_disk(tensors, path, *args, **kwargs):
        Path(path).write_bytes(b"\0" * 100)  # what fit
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(module, name, fills_the_disk)
    write = io._atomic_write

    def only_with_space(path, writer):
        leftovers = [p for p in run_dir.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".step")]
        if leftovers:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(path, writer)

    monkeypatch.setattr(io, "_atomic_write", only_with_space)


def _disk_full_in_checkpoint(tmp, monkeypatch):
    full_disk(monkeypatch, tmp / "run", "para.core.checkpoint:save_file")
    return ["train.checkpoint_every=1", "sample.enabled=false"]


def _disk_full_in_adapter(tmp, monkeypatch):
    full_disk(monkeypatch, tmp / "run", "para.core.io:save_file")
    return ["sample.enabled=false"]


def _nan_loss(tmp, monkeypatch):
    import torch

    from para.core import trainer

    monkeypatch.setattr(trainer.Trainer, "_loss", lambda *_a, **_k: torch.tensor(float("nan"), requires_grad=True))
    return []


FAULTS = [
    case(
        "fault-disk-full-checkpoint",
        "run",
        "",
        2,
        "the disk of {tmp}/run is full",
        "re-run the same command",
        "the disk fills up while a checkpoint is written (was two chained tracebacks, status `running` and a "
        "`.tmp` checkpoint left behind)",
        setup=_disk_full_in_checkpoint,
    ),
    case(
        "fault-disk-full-adapter",
        "run",
        "",
        2,
        "No space left on device",
        "hydra.run.dir=",
        "the disk fills up while the adapter is saved",
        setup=_disk_full_in_adapter,
    ),
    case(
        "fault-nan-loss",
        "run",
        "",
        2,
        "loss became nan at step 0",
        "lower method.lr",
        "the loss turns nan (was a TrainingError traceback)",
        setup=_nan_loss,
    ),
]


@pytest.mark.parametrize("c", FAULTS, ids=[c.id for c in FAULTS])
def test_fault(c: Case, tmp_path, monkeypatch, capsys, caplog, shared_tiny):
    extra = c.setup(tmp_path, monkeypatch)
    code = call_run([fill(a, tmp_path) for a in with_defaults(RUN, extra)])
    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    assert_answer(output, code, c.code, [fill(s, tmp_path) for s in c.says], c.way)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and c.says[-1].split()[-1] in output
    leftovers = [p.name for p in (tmp_path / "run").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers and not list((tmp_path / "run").rglob(".step*"))


SIGNAL_CASE = case(
    "fault-sigterm-while-sampling", "run", "sample.images_per_prompt=2", 143, "interrupted by SIGTERM",
    "re-run the same command to continue", "SIGTERM (SLURM preemption) while sampling: `interrupted`, the images "
    "made are kept, the same command finishes the run",
)  # fmt: skip


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


# --- make: the command make runs (`make -n` prints it), run in this process ------------------------------------

MAKE = [
    case("make-plan-unknown-method", "make", "plan PLAN_ARGS='--methods nope --out {tmp}/plan'", 2,
         "--methods nope: no such method", "choose from", "`make plan` with an unknown method (was a traceback)"),
    case("make-plan-unknown-model", "make", "plan PLAN_ARGS='--model sdxl2 --out {tmp}/plan'", 2,
         "Could not find 'model/sdxl2'", "tiny", "`make plan` with an unknown model (was a traceback)"),
    case("make-plan-unknown-key", "make", "plan PLAN_ARGS='train.optimzer=adamw --out {tmp}/plan'", 2,
         "train.optimzer is not a setting", "check its spelling", "`make plan` with an unknown config key (was a "
         "traceback)"),
    case("make-plan-resolution-zero", "make", "plan PLAN_ARGS='--resolution 0 --out {tmp}/plan'", 2,
         "model.resolution=0 is out of range", "a positive multiple of 8", "`make plan PLAN_ARGS=\"--resolution 0\"`"
         " (counted for minutes, at 1024)"),
]  # fmt: skip


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


# --- every numeric setting's range, by Hypothesis ---------------------------------------------------------------


@pytest.fixture(scope="module")
def base_config():
    from para.run.config import compose_config

    return compose_config("model=tiny", "run_dir=unused")


def _values_of(kind: type):
    special = st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63 - 1])
    if kind is float:
        return st.floats(allow_nan=True, allow_infinity=True) | special.map(float)
    return st.integers(min_value=-(2**63), max_value=2**63 - 1) | special


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_numeric_setting_refuses_exactly_its_out_of_range_values(base_config, data):
    """For any value of any numeric setting (nan, inf and 64-bit extremes included), the preflight's config check
    names the setting when — and only when — the value is outside its range or not finite; nothing raises."""
    import math

    from omegaconf import OmegaConf

    from para.run.config import RANGES, config_problems

    key = data.draw(st.sampled_from(sorted(k for k in RANGES if k != "method.lr")))
    kind = type(OmegaConf.select(base_config, key)) if OmegaConf.select(base_config, key) is not None else int
    value = data.draw(_values_of(float if kind is float else int))
    cfg = OmegaConf.create(OmegaConf.to_container(base_config))  # the schema's types are not needed here
    OmegaConf.update(cfg, key, value)
    problems = [p for p in config_problems(cfg) if p.startswith(f"{key}=")]
    ok, allowed = RANGES[key]
    finite = not isinstance(value, float) or math.isfinite(value) or key == "lock_wait"
    assert bool(problems) == (not (ok(value) and finite)), (key, value, problems)
    assert all(allowed in p for p in problems)


# --- the suite and docs/troubleshooting.md ----------------------------------------------------------------------

ALL_IDS = [c.id for c in (*CASES, *FAULTS, SIGNAL_CASE, *MAKE)]


def test_troubleshooting_lists_every_case_and_no_other():
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    section = doc.split("## Every bad input the suite tries", 1)[1]
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)
    assert sorted(listed) == sorted(ALL_IDS), set(ALL_IDS) ^ set(listed)
    assert len(set(ALL_IDS)) == len(ALL_IDS) >= 100
