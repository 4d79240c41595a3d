"""`hydra/launcher=processes`: every sweep cell its own local process, with the card(s) its model needs.

hydra-submitit-launcher's `submitit_local` starts every job at once and gives each `CUDA_VISIBLE_DEVICES` =
cards 0 … gpus_per_node−1: with `gpus_per_node: 0` every SDXL cell ran on the CPU while the card idled, with 1
every cell shared card 0. This launcher runs the same pickled jobs through submitit's LocalExecutor (a fresh
process per cell, its result read back: the SLURM code path on one machine) and schedules them: a cell that needs
g cards (`gpus_per_node`; conf/hydra/launcher/processes.yaml: 1 for SDXL-sized weights, none for the random
tiny/small models and the world model) starts when g cards are free and gets them to itself. A card is held
through an exclusive lock on `<gpu_lock_dir>/card-<id>.lock` while its cell runs, so two launchers on one machine
(`make -j`) never hand out the same card; the kernel drops the lock if the launcher dies. Cells that need no card
see none and run all at once, or `array_parallelism` at a time.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules without entering them in sys.modules,
# and dataclasses cannot resolve string annotations then.
import fcntl
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher

log = logging.getLogger(__name__)


@dataclass
class ProcessesQueueConf(LocalQueueConf):
    _target_: str = "hydra_plugins.para_launcher.processes.ProcessesLauncher"
    array_parallelism: int | None = None  # cells at once; null: every CPU cell, or as many as cards are free
    gpu_lock_dir: str = "runs/.submitit/gpus"  # one lock file per card, shared by the launchers of this machine
    poll_s: float = 1.0  # how often running cells are checked for a free card


ConfigStore.instance().store(group="hydra/launcher", name="para_processes", node=ProcessesQueueConf, provider="para")


def visible_cards(env: Mapping[str, str] = os.environ) -> list[str]:
    """The cards this launcher may hand out: its own `CUDA_VISIBLE_DEVICES` (indices, UUIDs or MIG ids, passed on
    as they are), else every card torch sees."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [card.strip() for card in listed.split(",") if card.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


class CardLocks:
    """The cards of this machine, each handed to one running cell at a time (an exclusive `flock` per card)."""

    def __init__(self, cards: Sequence[str], folder: str | Path):
        self.cards = list(cards)
        self.folder = Path(folder)
        self.held: dict[str, int] = {}  # card -> the file descriptor holding its lock

    def take(self, count: int) -> list[str] | None:
        """`count` free cards, now locked for the caller; None (nothing taken) when fewer are free."""
        self.folder.mkdir(parents=True, exist_ok=True)
        got: dict[str, int] = {}
        for card in self.cards:
            if len(got) == count:
                break
            if card in self.held:
                continue
            fd = os.open(self.folder / f"card-{card}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # another launcher's cell holds it
                os.close(fd)
                continue
            got[card] = fd
        if len(got) < count:
            self._release(got)
            return None
        self.held.update(got)
        return list(got)

    def give_back(self, cards: Sequence[str]) -> None:
        self._release({card: self.held.pop(card) for card in cards})

    @staticmethod
    def _release(locks: Mapping[str, int]) -> None:
        for fd in locks.values():
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def run_cells(
    executor: Any,
    fn: Callable[..., Any],
    calls: Sequence[tuple],
    gpus: int,
    cards: CardLocks | None,
    at_once: int,
    poll_s: float = 1.0,
) -> list[Any]:
    """Submit `fn(*call)` for every call through `executor`, at most `at_once` running, each cell that needs
    `gpus` cards with cards of its own (`CUDA_VISIBLE_DEVICES`, set by the job's shell before it starts); returns
    the jobs in the order of `calls`."""
    jobs: list[Any] = [None] * len(calls)
    running: dict[int, list[str]] = {}
    pending = list(range(len(calls)))
    while pending or running:
        for index, held in list(running.items()):
            if jobs[index].done():
                if cards is not None:
                    cards.give_back(held)
                del running[index]
        while pending and len(running) < at_once:
            held = cards.take(gpus) if cards is not None else []
            if held is None:
                break  # no free card: wait for a running cell
            # submitit_local exports CUDA_VISIBLE_DEVICES="" (gpus_per_node=0); the job's shell then sets it
            executor.update_parameters(setup=[f"export CUDA_VISIBLE_DEVICES={','.join(held)}"] if held else [])
            index = pending.pop(0)
            jobs[index] = executor.submit(fn, *calls[index])
            running[index] = held
            if held:
                log.info("cell #%d on card %s", index, ",".join(held))
        if pending or running:
            time.sleep(poll_s)
    return jobs


class ProcessesLauncher(LocalLauncher):
    """submitit_local with one card (or `gpus_per_node`) of its own per cell; see the module docstring."""

    OWN = ("array_parallelism", "gpu_lock_dir", "poll_s")

    def submit_all(self, fn: Callable[..., Any], calls: Sequence[tuple]) -> list[Any]:
        """Run `fn(*call)` for every call as launched cells run (the launcher's jobs, or a test's probe)."""
        import submitit

        params = dict(self.params)
        folder = params.pop("submitit_folder")
        at_once, lock_dir, poll_s = (params.pop(key) for key in self.OWN)
        gpus = params.pop("gpus_per_node") or 0
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(**params, gpus_per_node=0)  # the cards come from `run_cells`
        if not gpus:
            return run_cells(executor, fn, calls, 0, None, at_once or len(calls), poll_s)
        cards = visible_cards()
        if len(cards) < gpus:  # a user's setting, not a bug: the message alone, no traceback (as run.py does)
            log.error(
                "each cell needs %d GPU(s) (hydra.launcher.gpus_per_node: 1 for SDXL-sized weights) and %d are "
                "visible here (CUDA_VISIBLE_DEVICES=%r, torch.cuda.device_count()). Run on a machine with a GPU, "
                "or on the CPU on purpose: hydra.launcher.gpus_per_node=0 device=cpu",
                gpus,
                len(cards),
                os.environ.get("CUDA_VISIBLE_DEVICES"),
            )
            raise SystemExit(2)
        limit = min(at_once or len(calls), len(cards) // gpus)
        return run_cells(executor, fn, calls, gpus, CardLocks(cards, lock_dir), limit, poll_s)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        calls = []
        for index, overrides in enumerate(job_overrides, initial_job_idx):
            log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
            calls.append((list(overrides), "hydra.sweep.dir", index, f"job_id_for_{index}", Singleton.get_state()))
        return [job.results()[0] for job in self.submit_all(self, calls)]
