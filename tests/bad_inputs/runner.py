"""How the bad-input cases are run and judged: the command in this process, its output, what is on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from conftest import FAST, REPO

from bad_inputs import Case
from bad_inputs.setups import DATA_ROOT

# What every `run` case adds before its own arguments (a case's own value for a key wins): conftest's FAST tiny run
# (32 px, 2 steps, one image) without scoring or resource plan; its run folder is {tmp}/run.
RUN = [*FAST, "eval.enabled=false", "plan.check=false", "hydra.run.dir={tmp}/run"]


def fill(text: str, tmp: Path) -> str:
    for name, value in (("{tmp}", tmp), ("{data}", DATA_ROOT), ("{root}", REPO)):
        text = text.replace(name, str(value))
    return text


def with_defaults(defaults: list[str], own: list[str]) -> list[str]:
    """`defaults` less the keys `own` sets, then `own` (Hydra refuses a key given twice)."""
    keys = {a.split("=", 1)[0].lstrip("+~") for a in own if "=" in a}
    return [d for d in defaults if d.split("=", 1)[0] not in keys] + own


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
