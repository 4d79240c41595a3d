"""The bad-input suite's cases (tests/test_bad_inputs.py runs them; docs/troubleshooting.md lists them).

A case is one command as a user types it — `python run.py …`, `python -m para.export …`, `python -m eval …`,
`python -m para.run.plan …`, `python -m para.run.preflight …` — with what it must answer: the exit code, words
that name the problem and words that name a way out (never a traceback), and what may change on disk (by default
nothing). `run` cases about composition or Hydra's own folder go through `run.py`'s Hydra main, the others
through the same `run()` on Hydra's compose API (`hydra.run.dir=` becomes `run_dir=`). `{tmp}` in an argument is
the case's own folder, `{data}` the DreamBooth photos, `{root}` the checkout.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Setup = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    id: str
    tool: str  # run | export | eval | plan | preflight
    argv: tuple[str, ...]
    code: int  # the exit code
    says: tuple[str, ...]  # the problem, as the output must name it
    way: tuple[str, ...]  # a way out, as the output must name it
    problem: str  # the bad input, in words (docs/troubleshooting.md)
    setup: Setup | None = None  # prepares {tmp} (after the trained runs of `uses` are copied there)
    uses: tuple[str, ...] = ()  # trained run folders copied to {tmp}/<name> first (tests/test_bad_inputs.py)
    writes: tuple[str, ...] = ()  # globs under {tmp} the command may create or change; nothing else may change
    absent: tuple[str, ...] = ()  # must not be in the output
    check: Callable[[Path, str], None] | None = None  # more about the disk and the output afterwards
    # `run` cases go through run.py's `run` on the config Hydra's compose API makes (half the cost of Hydra's
    # main, which composes twice); those about what Hydra's main itself does (composition errors: exit 1; the
    # folder it makes) go through `python run.py`'s main
    hydra_main: bool = False


def case(id: str, tool: str, args: str, code: int, says, way, problem: str, **more) -> Case:
    """A case with its arguments as one shell-quoted string; `says` / `way` one fragment or several."""
    as_tuple = lambda v: (v,) if isinstance(v, str) else tuple(v)  # noqa: E731
    return Case(id, tool, tuple(shlex.split(args)), code, as_tuple(says), as_tuple(way), problem, **more)
