"""One batched QR per group of same-shape PaRa layers per UNet forward, instead of one QR per layer.

PaRa's 346 SDXL layers each need Q = qr(B) at every step: 346 small `torch.linalg.qr` calls forward and their
backward, thousands of tiny kernel launches (issue 25). The B's come in a few shapes only (m × r: 320 × 8,
640 × 16, 1280 × 32, …), so `SharedBases`, a forward pre-hook on the UNet, stacks the B's of each shape into
one (G, m, r) tensor and runs one `torch.linalg.qr` on the batch; each layer then takes its Q from it. The
backward is batched by autograd in the same way (one QR backward per group, then `stack`'s backward hands each
B its gradient). Batched QR is the per-matrix QR run on each matrix of the batch, so every Q is the one the
layer would compute alone (tests/test_batched_qr.py: to fp32 rounding, and the same training).

A layer uses its shared Q while the B it was computed from is unchanged (its `_version`): through the UNet's
forward and, with gradient checkpointing, through the backward that recomputes the forward of its block (the
recomputation must take the same path). The Q's are dropped once their group's gradient reached the B's, after a
forward without grad, or at the next forward; a layer without a current shared Q computes its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from para.layers import PaRaLayer, orthonormal_basis


def shape_groups(layers: Iterable[PaRaLayer]) -> list[list[PaRaLayer]]:
    """The layers grouped by their B's shape, device and dtype (what one batched QR can take), in layer order."""
    groups: dict[tuple[Any, ...], list[PaRaLayer]] = {}
    for layer in layers:
        b = layer.para_B
        groups.setdefault((tuple(b.shape), b.device, b.dtype), []).append(layer)
    return list(groups.values())


def batched_bases(group: list[PaRaLayer]) -> tuple[Tensor, list[Tensor]]:
    """(the stacked B's, Q = qr(B) of every layer of `group`) through one batched QR; differentiable in each B."""
    b = torch.stack([layer.para_B for layer in group])  # (G, m, r)
    return b, list(orthonormal_basis(b).unbind(0))


class SharedBases:
    """The UNet's pre- and post-forward hooks that give each unmerged PaRa layer its Q from a batched QR."""

    def __init__(self, layers: Iterable[PaRaLayer]):
        self.groups = shape_groups(layers)
        self._handles: list[RemovableHandle] = []

    def attach(self, unet: nn.Module) -> SharedBases:
        self._handles = [
            unet.register_forward_pre_hook(self._before),
            unet.register_forward_hook(self._after, always_call=True),
        ]
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._forget()

    def _before(self, module: nn.Module, args: Any) -> None:
        self._forget()
        for group in self.groups:
            active = [layer for layer in group if not layer.merged]  # merged layers are not called
            if not active:
                continue
            b, bases = batched_bases(active)
            for layer, q in zip(active, bases, strict=True):
                layer.shared_basis = (q, layer.para_B._version)
            if b.requires_grad:  # every layer of the group is through its backward when the B's get their gradient
                b.register_hook(lambda _grad, group=active: self._forget(group))

    def _after(self, module: nn.Module, args: Any, output: Any) -> None:
        if not torch.is_grad_enabled():  # no backward will recompute anything
            self._forget()

    def _forget(self, layers: Iterable[PaRaLayer] | None = None) -> None:
        for layer in layers if layers is not None else (l for g in self.groups for l in g):  # noqa: E741
            layer.shared_basis = None
