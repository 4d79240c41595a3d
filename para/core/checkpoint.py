"""Resumable training checkpoints, pickle-free: method state and optimizer state as safetensors.

A checkpoint is a folder `checkpoints/step000123/` written under a temporary name and renamed when complete,
so a kill while writing leaves at most an ignored `.tmp` folder. `latest_checkpoint` verifies every file and
falls back to the previous checkpoint when one is unreadable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from para.core.io import atomic_write_json, read_json

log = logging.getLogger(__name__)

_FILES = ("trainable.safetensors", "optimizer.safetensors", "state.json")

# train.checkpoint_every=null picks the interval by what one checkpoint writes. SDXL adapters are small (PaRa r16:
# 73 MB, LoRA r16: 207 MB with AdamW moments): every 50 steps a kill loses little and costs a second of writing.
# DreamBooth's full UNet with AdamW is ~31 GB per checkpoint: every 500 steps (once in a 1000-step cell); a SIGTERM
# (SLURM preemption, time limit) checkpoints anyway (para.core.interrupts).
SMALL_CHECKPOINT_BYTES = 1 << 30
OFTEN, RARELY = 50, 500
OPTIMIZER_STATES = {"adamw": 2.0, "adamw8bit": 0.5, "adafactor": 0.0}  # per parameter, in parameter-sized units


def checkpoint_bytes(params: list[Tensor], optimizer: str) -> int:
    """About what one checkpoint of these parameters writes: the tensors and the optimizer's moments."""
    size = sum(p.numel() * p.element_size() for p in params)
    return int(size * (1 + OPTIMIZER_STATES.get(optimizer, 2.0)))


def checkpoint_interval(params: list[Tensor], optimizer: str) -> int:
    """The automatic `train.checkpoint_every`: often for small states, rarely for a full UNet."""
    return interval_for_size(checkpoint_bytes(params, optimizer))


def interval_for_size(nbytes: int) -> int:
    """The automatic `train.checkpoint_every` of checkpoints of `nbytes` (the resource plan counts them exactly)."""
    return OFTEN if nbytes < SMALL_CHECKPOINT_BYTES else RARELY


def optimizer_to_tensors(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Flatten `optimizer.state_dict()` into tensors + JSON metadata (no pickle)."""
    tensors, scalars = {}, {}
    for index, per_param in state["state"].items():
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    meta = {"param_groups": json.dumps(state["param_groups"]), "scalars": json.dumps(scalars)}
    return tensors, meta


def optimizer_from_tensors(tensors: dict[str, Tensor], meta: dict[str, str]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *json.loads(meta["scalars"]).items()]:
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": json.loads(meta["param_groups"])}


def save_checkpoint(
    folder: Path, step: int, trainable: dict[str, Tensor], optimizer: dict[str, Any], extra: dict[str, Any], keep: int
) -> Path:
    """Write checkpoint `step` atomically and keep only the newest `keep` checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step{step:06d}"
    tmp = folder / f".step{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(tmp / _FILES[0]))
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
        save_file(opt_tensors, str(tmp / _FILES[1]), metadata=opt_meta)
        atomic_write_json(tmp / _FILES[2], {"step": step, **extra})
    except BaseException:  # a full disk, a kill: the partial checkpoint goes (it also frees what it took)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(folder.glob("step*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_checkpoints(folder: Path) -> None:
    """Delete the checkpoints `save_checkpoint` wrote under `folder` (and the folder, if nothing else is in it)."""
    if not folder.is_dir():
        return
    for path in [*folder.glob("step[0-9]*"), *folder.glob(".step[0-9]*.tmp")]:
        if path.is_dir() and {p.name for p in path.iterdir()} <= set(_FILES):
            shutil.rmtree(path)
    if not any(folder.iterdir()):
        folder.rmdir()


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})  # noqa: SIM118


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """(trainable tensors, optimizer state dict, extra state); raises ValueError if anything is unreadable."""
    try:
        trainable, _ = _read_safetensors(path / _FILES[0])
        opt_tensors, opt_meta = _read_safetensors(path / _FILES[1])
        extra = read_json(path / _FILES[2])
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        raise ValueError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err})") from err
    return trainable, optimizer_from_tensors(opt_tensors, opt_meta), extra


def latest_checkpoint(folder: Path) -> tuple[Path, tuple] | None:
    """Newest readable checkpoint under `folder` with its contents; corrupt ones are skipped with a warning."""
    for path in sorted(folder.glob("step*"), reverse=True):
        try:
            return path, load_checkpoint(path)
        except ValueError as err:
            log.warning("skipping %s; falling back to an earlier checkpoint", err)
    return None
