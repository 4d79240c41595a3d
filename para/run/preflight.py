"""Check everything a run needs before anything is written or trained, and list every problem at once.

    python -m para.run.preflight method=lora subject=dog model=tiny     # one run: its problems, or what it will do
    python -m para.run.preflight +experiment=table1 --cell "method=para subject=dog" --cell "method=lora subject=cat"

`para.run.runner` runs these checks before it creates the run folder; `make reproduce-table1` runs them for all
its unfinished cells before the first one trains. A check is a function of a `Cell` that yields problems, each
saying what is wrong and the way out: the standard ones are in para.run.checks; register more with
`@check("name")` (they run in registration order, and `requires` names checks whose failure makes this one
meaningless). Nothing here writes to disk.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from para.run.checks import STANDARD, Cell, Check, forget

__all__ = ["CHECKS", "Cell", "Check", "PreflightError", "check", "preflight", "problems"]
log = logging.getLogger(__name__)


class PreflightError(ValueError):
    """Problems found before the run started; the message lists every one with its way out."""


CHECKS: list[Check] = list(STANDARD)  # run in this order; `check` adds more


def check(name: str, requires: tuple[str, ...] = ()) -> Callable:
    """Register `fn(cell) -> problems` as the check `name` (run after those registered before it)."""

    def register(fn: Callable[[Cell], Iterable[str]]) -> Callable[[Cell], Iterable[str]]:
        CHECKS[:] = [c for c in CHECKS if c.name != name] + [Check(name, fn, requires)]
        return fn

    return register


def problems(cfg: DictConfig, run_dir: Path, skip: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(check name, problem) for every problem of the run `cfg` in `run_dir`; empty when it can start."""
    return run_checks(Cell(cfg, Path(run_dir)), skip)


def run_checks(cell: Cell, skip: Iterable[str] = ()) -> list[tuple[str, str]]:
    found = []
    for c in CHECKS:
        if c.name in skip or cell.failed & set(c.requires):
            continue
        mine = [(c.name, p) for p in c.run(cell)]
        cell.failed |= {c.name} if mine else set()
        found += mine
    return found


def format_problems(found: list[tuple[str, str]], where: str) -> str:
    lines = [f"{len(found)} problem{'s' * (len(found) != 1)} found before anything ran ({where}):"]
    for i, (name, text) in enumerate(found, 1):
        lines.append(f"  {i}. [{name}] " + text.replace("\n", "\n     "))
    return "\n".join(lines)


def preflight(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Raise PreflightError listing every problem of this run (nothing is written either way); else what the
    checks worked out (`resources`: the resource plan the run is admitted with)."""
    forget()  # a run looks afresh: what an earlier run of this process found may have been fixed since
    cell = Cell(cfg, Path(run_dir))
    found = run_checks(cell)
    if found:
        raise PreflightError(format_problems(found, str(run_dir)))
    return cell.shared


# --- command line --------------------------------------------------------------------------------------------


def check_one(overrides: list[str], skip: Iterable[str] = ()) -> tuple[str, list[tuple[str, str]], str]:
    """(run folder, problems, what the run would do) of the run `python run.py <overrides>` would start."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from para.run.config import compose_config, compose_error_message

    try:
        cfg = compose_config(*overrides)
    except (HydraException, OmegaConfBaseException) as err:
        return "?", [("compose", f"{' '.join(overrides)}: {compose_error_message(err)}")], ""
    # `python run.py` runs in hydra.run.dir when it is given (Hydra's compose API leaves that to the caller)
    chosen_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    cell = Cell(cfg, Path(chosen_dirs[-1] if chosen_dirs else cfg.run_dir))
    found = run_checks(cell, skip)
    chosen = cell.shared.get("plan")
    return str(cell.run_dir), found, f"{chosen.action}{': ' + chosen.note if chosen.note else ''}" if chosen else ""


def check_cells(common: list[str], cells: list[list[str]], skip: Iterable[str] = ()) -> int:
    """Check every cell; print each distinct problem once with the cells it concerns (or what each run would
    do); 0 when all can start, else 2."""
    cells = cells or [[]]
    ready, failed = [], {}  # problem -> run folders
    for overrides in cells:
        run_dir, found, action = check_one([*common, *overrides], skip)
        for problem in found:
            failed.setdefault(problem, []).append(run_dir)
        if not found:
            ready.append(run_dir)
            print(f"ok: {run_dir} ({action})")
    if failed:
        listed = []
        for (name, text), folders in failed.items():
            shown = ", ".join(folders[:4]) + (f", ... ({len(folders)} runs)" if len(folders) > 4 else "")
            listed.append((name, f"{text}\n(in {shown})"))
        print(format_problems(listed, f"{len(cells) - len(ready)} of {len(cells)} runs"), file=sys.stderr)
    print(f"preflight: {len(ready)} of {len(cells)} run(s) ready" + (", nothing was run" if failed else ""))
    return 2 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m para.run.preflight", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides shared by every cell (as for run.py)")
    parser.add_argument("--cell", action="append", default=[], help="one more run: its own overrides, quoted")
    parser.add_argument(
        "--skip", action="append", default=[], help=f"a check to leave out ({', '.join(c.name for c in CHECKS)})"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    unknown = set(args.skip) - {c.name for c in CHECKS}
    if unknown:
        parser.error(f"unknown check(s) {sorted(unknown)}")
    cells = []
    for cell in args.cell:
        try:
            cells.append(shlex.split(cell))
        except ValueError as err:  # an unbalanced quote
            parser.error(f"--cell {cell!r}: {err}; quote each cell's overrides as one argument")
    return check_cells(args.overrides, cells, args.skip)


if __name__ == "__main__":
    sys.exit(main())
