"""Faults that need more than arguments (tests/test_bad_inputs_faults.py): a full disk, a loss that turns nan, a
signal while sampling; and `make plan`, as the command `make -n` prints."""

from __future__ import annotations

import errno
from pathlib import Path

from bad_inputs import case


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


SIGNAL_CASE = case(
    "fault-sigterm-while-sampling", "run", "sample.images_per_prompt=2", 143, "interrupted by SIGTERM",
    "re-run the same command to continue", "SIGTERM (SLURM preemption) while sampling: `interrupted`, the images "
    "made are kept, the same command finishes the run",
)  # fmt: skip

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
