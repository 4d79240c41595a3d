"""OFT on k×k convolutions run through the rotated weight W0 Rᵀ (why: baselines/lycoris.py's docstring).

Its own module because it subclasses peft's layer: importing it loads peft, which `baselines.lycoris` (read when
any config is composed) leaves to the moment an OFT adapter is attached.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.oft.layer import Conv2d as PeftOftConv2d
from peft.tuners.oft.layer import OFTRotationModule
from torch import Tensor


def rotated_weight(weight: Tensor, rotation: OFTRotationModule) -> Tensor:
    """W0 Rᵀ for peft's block-diagonal R, block by block: what peft's OFT `merge` writes into the weight."""
    # peft has no public per-block accessor; `get_weight` builds the dense block-diagonal matrix instead.
    blocks = rotation._cayley_batch(
        rotation.weight, rotation.block_size, rotation.use_cayley_neumann, rotation.num_cayley_neumann_terms
    )  # (r or 1 when shared, b, b)
    w = weight.reshape(weight.shape[0], -1, rotation.block_size)  # (m, r, b)
    blocks = blocks.expand(w.shape[1], -1, -1)
    return torch.einsum("mrk,rck->mrc", w.to(blocks.dtype), blocks).reshape(weight.shape)


class OftConv2dByWeight(PeftOftConv2d):
    """peft's OFT Conv2d whose unmerged forward convolves with the rotated weight (see the module docstring)."""

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        active = [a for a in self.active_adapters if a in self.oft_R]
        if self.disable_adapters or self.merged or not active:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        weight = base.weight
        for adapter in active:
            weight = rotated_weight(weight, self.oft_R[adapter])
        return base._conv_forward(x, weight.to(base.weight.dtype), base.bias)
