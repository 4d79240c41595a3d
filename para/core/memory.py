"""Peak memory of one region of code (a run's training, sampling; each method in `para.bench.compare`).

CPU: the kernel's resident-set high-water mark (VmHWM), reset at the start of the region by writing `5` to
`/proc/self/clear_refs` (Linux ≥ 4.0). `ru_maxrss` cannot do this: it only grows over the life of the process,
so in a process that benchmarks several methods it would report the largest method for all of them. A forked
child per method would reset it, but forking after PyTorch has used its OpenMP pool deadlocks the child (tried).
Before the region, freed heap is handed back to the kernel (`malloc_trim`), so that memory freed by the previous
method and kept by glibc is not silently reused by the next one, which would hide part of its increase.

CUDA: `torch.cuda.max_memory_allocated`, reset at the start of the region (tensors only, not the allocator's
cache, which is what the issue asks for).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from pathlib import Path

import torch

MIB = 2**20
_STATUS = Path("/proc/self/status")
MEMINFO = Path("/proc/meminfo")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def release_memory(device: torch.device) -> None:
    """Collect garbage and give freed memory back (CUDA cache, or the glibc heap) before a measurement."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):  # glibc only
            libc.malloc_trim(0)


def proc_kib(path: Path, field: str) -> int | None:
    """A `Field:  123 kB` line of a /proc file (`/proc/self/status`, `/proc/meminfo`) in KiB; None where absent."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _status_mb(field: str) -> float | None:
    kib = proc_kib(_STATUS, field)
    return None if kib is None else kib / 1024


def current_mb(device: torch.device) -> float | None:
    """Memory in use now: allocated CUDA tensors, or the process's resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / MIB
    return _status_mb("VmRSS")


def reset_peak(device: torch.device) -> bool:
    """Start a new peak at the current usage; False where the platform cannot (then peaks are not reported)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_mb(device: torch.device) -> float | None:
    """Peak since the last `reset_peak`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    return _status_mb("VmHWM")


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.increase_mb`: how far the region raised memory above its start."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start_mb: float | None = None
        self.peak_mb: float | None = None
        self._ok = False

    def __enter__(self) -> PeakMemory:
        release_memory(self.device)
        self.start_mb = current_mb(self.device)
        self._ok = self.start_mb is not None and reset_peak(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self._ok:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.peak_mb = peak_mb(self.device)

    @property
    def increase_mb(self) -> float | None:
        if self.peak_mb is None or self.start_mb is None:
            return None
        return max(0.0, self.peak_mb - self.start_mb)
