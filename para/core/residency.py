"""What stays on the accelerator while training: frozen parts whose outputs are cached leave it.

With the photos' latents and the prompt cached (`train.cache_latents`, text encoders frozen), a training step uses
only the UNet; SDXL's VAE and two text encoders would hold ~1.8 GB (bf16) of accelerator memory for nothing.
`Offload` moves them to the CPU for the steps and back for what needs them: validation grids and sampling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

CPU = torch.device("cpu")


class Offload:
    """Modules that wait on `away` (the CPU) while parked and work on `home` (the training device)."""

    def __init__(self, modules: dict[str, nn.Module], home: torch.device, away: torch.device = CPU):
        self.modules, self.home, self.away = modules, home, away
        self.parked = False

    def _move(self, device: torch.device) -> None:
        for module in self.modules.values():
            module.to(device)  # a no-op when already there (CPU runs): nothing is copied

    def park(self) -> None:
        self._move(self.away)
        self.parked = True

    def restore(self) -> None:
        self._move(self.home)
        self.parked = False

    @contextmanager
    def restored(self) -> Iterator[None]:
        """The modules at home for the block (e.g. a validation grid), parked again after it if they were."""
        was_parked = self.parked
        if was_parked:
            self.restore()
        try:
            yield
        finally:
            if was_parked:
                self.park()
