"""Whether a device named in a setting or a flag exists on this machine, said before anything is loaded onto it."""

from __future__ import annotations

import torch


class DeviceUnavailable(ValueError):
    """A device this machine lacks (`cuda` without a GPU, `cuda:7` on a 2-GPU machine, `gpu0`)."""


def device_problem(key: str, name: str) -> str | None:
    """Why `name` (auto | cpu | cuda | cuda:N | mps) is not a device of this machine, or None."""
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"{key}={name!r} is not a device; expected auto, cpu, cuda, cuda:N or mps"
    way_out = f"use {key}=auto (a GPU when there is one, else the CPU) or {key}=cpu"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"{key}={name!r}, but this machine has no usable CUDA GPU (torch {torch.__version__}); {way_out}"
        if device.index is not None and device.index >= count:
            return f"{key}={name!r}, but this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1}); {way_out}"
    elif device.type == "mps" and not torch.backends.mps.is_available():
        return f"{key}={name!r}, but MPS is not available here; {way_out}"
    elif device.type not in ("cpu", "cuda", "mps"):
        return f"{key}={name!r}: the harness runs on cpu, cuda or mps"
    return None


def check_device(key: str, name: str) -> None:
    """Raise DeviceUnavailable with `device_problem`'s message (what is wrong and the way out)."""
    problem = device_problem(key, name)
    if problem:
        raise DeviceUnavailable(problem)
