"""Operators dispatched while a region runs: on a GPU each is (at least) one kernel launch.

    with DispatchCount() as count:
        trainer step
    count.total, count.by_name["linalg_qr.default"]

A `TorchDispatchMode` sees every ATen operator below autograd, forward and backward alike (views and in-place
ops included). `make bench` counts one training step per method this way (untimed: the mode's Python call per
operator would dominate the timing), e.g. PaRa with one QR per layer against one batched QR per shape.
"""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode


class DispatchCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.by_name: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.by_name[func.__name__] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.by_name.values())

    def matching(self, part: str) -> int:
        """Operators whose name contains `part` (e.g. "qr": the QRs, forward; their backward is other ops)."""
        return sum(n for name, n in self.by_name.items() if part in name)
