"""PaRa as parametrized in the authors' public code (PAPER.md §7, `LoRA_Left_Column_learn_Q_Module`).

One QR at attach time of the same initial B as `para` (Q = qr(B0), m × r), then two independent trainable
tensors, never re-orthonormalized:

    U = Q  (m × r)        D = Qᵀ W0  (r × n, a conv kernel flattened to c_out × (c_in·k²))
    y = W0 x − U (D x) + b          (bias not projected; for a conv, D x is a conv with r output channels)

At step 0 this is exactly `para` with the same B0 (W0 x − QQᵀW0 x); afterwards U leaves the orthonormal set and
D leaves QᵀW0, so the update is a general rank-r additive one (a LoRA initialized at −QQᵀW0), with LoRA's
parameter count r·(m + n·k²) at PaRa's per-layer r_eff. Rank, γ cap, init and subsets are `para`'s, so runs of
both differ only in the parametrization: whether the paper's numbers depend on it is what this method measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from para.adapter import PaRa, ParaConfig
from para.layers import flat_weight, orthonormal_basis
from para.layerwise import DeltaLayer, apply_weight


@dataclass
class ParaAuthorsConfig(ParaConfig):
    """`para`'s options (rank, γ, subset, init, init_std, lr), so both are configured alike."""

    name: str = "para_authors"


class ParaAuthorsLayer(DeltaLayer):
    """y = W0 x − U (D x) + b with U (m × r) and D (r × n) both trainable, from U = Q, D = QᵀW0."""

    def __init__(self, base: nn.Linear | nn.Conv2d, b: Tensor):
        super().__init__(base)
        if isinstance(base, nn.Conv2d) and base.groups != 1:
            raise NotImplementedError("para_authors flattens conv kernels; grouped convolutions are not supported")
        q = orthonormal_basis(b)  # float32 QR even under autocast (PAPER.md §1)
        w = flat_weight(base).detach().float()
        self.para_U = nn.Parameter(q.to(w.device))  # (m, r)
        self.para_D = nn.Parameter(q.T.to(w.device) @ w)  # (r, n)

    @property
    def rank(self) -> int:
        return self.para_U.shape[1]

    def delta_weight(self) -> Tensor:
        return -(self.para_U @ self.para_D)  # (m, n)

    def adapted_forward(self, x: Tensor) -> Tensor:
        base = self.base
        h = apply_weight(base, x, base.weight)  # W0 x, no bias
        u = self.para_U.to(h.dtype)
        if isinstance(base, nn.Linear):
            y = h - (x @ self.para_D.to(x.dtype).T) @ u.T  # (..., n) -> (..., r) -> (..., m)
        else:
            d = self.para_D.to(x.dtype).reshape(self.rank, *base.weight.shape[1:])  # (r, c_in, kh, kw)
            coeffs = apply_weight(base, x, d)  # (B, r, H', W'): D x, with the base conv's stride and padding
            y = h - torch.einsum("brhw,cr->bchw", coeffs, u)
        bias = base.bias
        if bias is None:
            return y
        return y + (bias if isinstance(base, nn.Linear) else bias[:, None, None]).to(y.dtype)


class ParaAuthors(PaRa):
    """`para`'s layer selection, γ cap, init and rank checks; only the layer (the parametrization) differs."""

    name = "para_authors"
    Config = ParaAuthorsConfig
    layer_type = ParaAuthorsLayer
