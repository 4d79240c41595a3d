"""SIGTERM and Ctrl-C stop a run cleanly: the run records `status: interrupted` and exits with 128 + signal.

SLURM sends SIGTERM on preemption, `scancel`, `scontrol requeue` and at the time limit, then SIGKILL after its
KillWait (30 s by default). Inside `stop_on_signals()`, SIGTERM and SIGINT raise `RunInterrupted`; inside a
`deferred()` block (one training step, see para.core.trainer) the first signal waits for the block to end, so the
trainer can save a checkpoint of a whole step; a second signal stops at once.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(BaseException):
    """A stop signal arrived. A BaseException like KeyboardInterrupt: no `except Exception` swallows it."""

    def __init__(self, signum: int, at_boundary: bool = False):
        self.signum = signum
        self.at_boundary = at_boundary  # raised where a deferred() block ended: the state is whole (a step done)
        super().__init__(f"stopped by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for Ctrl-C

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class _State:
    depth = 0  # nesting of deferred() blocks
    pending: int | None = None  # a signal that arrived inside one


def _handler(signum: int, _frame) -> None:
    if _State.depth and _State.pending is None:
        _State.pending = signum  # finish the step first
        return
    raise RunInterrupted(signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM / SIGINT raise `RunInterrupted` inside (main thread only; elsewhere Python delivers no signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _State.pending = None


@contextmanager
def deferred() -> Iterator[None]:
    """A stop signal arriving inside is raised when the block ends (as `RunInterrupted`)."""
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
    if not _State.depth and _State.pending is not None:
        signum, _State.pending = _State.pending, None
        raise RunInterrupted(signum, at_boundary=True)
