"""SVDiff baseline (Han et al., ICCV 2023; the paper's other baseline in Fig. 2): spectral shifts.

For each adapted layer, W0 = U diag(σ) Vᵀ (a conv kernel flattened to c_out × (c_in·k²), like PaRa) and only a
shift δ per singular value trains:

    W = U diag(ReLU(σ + δ)) Vᵀ = W0 + U diag(ReLU(σ + δ) − σ) Vᵀ        (δ = 0: exactly W0, as σ ≥ 0)

The SVD is computed once at attach time in float32 and cached as non-persistent buffers; only δ is saved (a
fresh attach recomputes the SVD of the same W0). We form ΔW = U diag(ReLU(σ+δ) − σ) Vᵀ and run the layer with
W0 + ΔW, like the reference implementation (mkshing/svdiff-pytorch, `layers.py`) that rebuilds the weight every
forward: the cost is one m·k·n product per layer per step, independent of the number of tokens. Writing W0 + ΔW
instead of U diag(ReLU(σ+δ)) Vᵀ keeps the layer bit-identical to the base model at δ = 0 and lets U, V be kept
in the frozen weights' dtype (bf16 on GPU: their rounding only touches the small ΔW, never W0).
Trainable parameters per layer: min(m, n·k²); on SDXL ExCA 384,640 (16× fewer than PaRa r16 γ=1/40).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from para.layers import flat_weight
from para.layerwise import DeltaLayer, LayerwiseMethod, apply_weight


@dataclass
class SVDiffConfig:
    name: str = "svdiff"
    subset: Any = "noxattn"  # same layers as PaRa (ExCA) for a like-for-like comparison
    lr: float = 1e-3  # svdiff-pytorch README: learning_rate=1e-3 for the spectral shifts


class SVDiffLayer(DeltaLayer):
    """A frozen Linear/Conv2d whose singular values are shifted by the trainable `svdiff_delta`."""

    def __init__(self, base: nn.Linear | nn.Conv2d):
        super().__init__(base)
        with torch.no_grad():  # float32 SVD: not implemented or unreliable in half precision
            u, s, vh = torch.linalg.svd(flat_weight(base).float(), full_matrices=False)  # (m,k) (k,) (k,n)
        dtype = base.weight.dtype
        self.register_buffer("svd_U", u.to(dtype), persistent=False)
        self.register_buffer("svd_S", s, persistent=False)  # float32: σ + δ must not be rounded to bf16
        self.register_buffer("svd_Vh", vh.to(dtype), persistent=False)
        self.svdiff_delta = nn.Parameter(torch.zeros_like(s))  # SVDiff: δ = 0 at start, the base model

    def spectrum(self) -> Tensor:
        """ReLU(σ + δ), the adapted singular values (float32)."""
        return F.relu(self.svd_S + self.svdiff_delta)

    def delta_weight(self) -> Tensor:
        shift = (self.spectrum() - self.svd_S).to(self.svd_U.dtype)  # (k,)
        return (self.svd_U * shift) @ self.svd_Vh  # (m, k) · diag(k) · (k, n) -> (m, n)

    def adapted_forward(self, x: Tensor) -> Tensor:
        weight = self.base.weight + self.delta_weight().reshape(self.base.weight.shape).to(self.base.weight.dtype)
        return apply_weight(self.base, x, weight, self.base.bias)


class SVDiff(LayerwiseMethod):
    name = "svdiff"
    Config = SVDiffConfig
    layer_type = SVDiffLayer

    def wrap(self, name: str, module: nn.Linear | nn.Conv2d) -> SVDiffLayer:
        return SVDiffLayer(module)
