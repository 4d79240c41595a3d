"""The PaRa layer: a frozen Linear/Conv2d whose output space loses r learned directions (PAPER.md §1).

    B ∈ R^{m×r} (trainable)    Q = qr(B)    W = (I − QQᵀ) W0    y = W x + b = h − Q(Qᵀh) + b,  h = W0 x

Q acts on the left (output features / output channels). We never form the m×m projector nor the reduced
weight while training: `h` is computed once by the frozen layer and the projection costs two thin matmuls,
about what a LoRA of the same rank costs. The bias is not projected (authors' code).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from para.function import ConvArgs, frozen_output, para_projection

INITS = ("gaussian", "weakest")


def flat_weight(layer: nn.Linear | nn.Conv2d) -> Tensor:
    """W0 as an m × n matrix; a conv kernel is flattened to c_out × (c_in·k²) (authors' flattening)."""
    return layer.weight.reshape(layer.weight.shape[0], -1)


def out_features(layer: nn.Linear | nn.Conv2d) -> int:
    return layer.weight.shape[0]


def swap_weight(layer: nn.Linear | nn.Conv2d, weight: Tensor) -> Tensor:
    """Give `layer` the values of `weight` (cast to its dtype) in a new tensor; returns the old one, untouched.

    Merging swaps rather than writes in place, so unmerging is exact in any dtype (at the price of holding both
    weights of the adapted layers while merged).
    """
    old = layer.weight.data
    layer.weight.data = weight.to(old.dtype).reshape(old.shape)
    return old


def orthonormal_basis(b: Tensor) -> Tensor:
    """Q of the thin QR of B, always in float32: QR is unsupported or unreliable in bf16/fp16 (PAPER.md §1)."""
    # (meta tensors, used to count parameters without weights, have no autocast state of their own)
    with torch.autocast(device_type="cpu" if b.is_meta else b.device.type, enabled=False):
        q, _ = torch.linalg.qr(b.float(), mode="reduced")
    return q


def initial_b(layer: nn.Linear | nn.Conv2d, rank: int, init: str, std: float, generator: torch.Generator) -> Tensor:
    """Initial B (m × r, float32).

    `gaussian`: N(0, std²) — the paper's zero init is impossible through QR (qr(0) has no gradient).
    `weakest`: the r left singular directions where W0 is weakest, so removing them changes the layer's output
    least at step 0 (for a tall W0 these are null directions of W0ᵀ and the layer starts as the identity).
    """
    m = out_features(layer)
    if init == "gaussian":
        b = torch.randn(m, rank, generator=generator) * std
        return b.to(layer.weight.device)
    if init == "weakest":
        w = flat_weight(layer).detach().float()
        # eigh of W Wᵀ (m × m) is far cheaper than an SVD of the wide conv matrix; eigenvalues come ascending.
        _, vectors = torch.linalg.eigh(w @ w.T)
        return vectors[:, :rank].contiguous()
    raise ValueError(f"unknown PaRa init {init!r}; expected one of {list(INITS)}")


class PaRaLayer(nn.Module):
    """Wraps a frozen nn.Linear or nn.Conv2d; only `para_B` trains."""

    # (Q, the `_version` of para_B it was computed from): Q of this layer from the batched QR of every layer of its
    # shape (para.batched_qr.SharedBases), set by the UNet's forward; None: the layer computes its own.
    shared_basis: tuple[Tensor, int] | None = None

    def __init__(self, base: nn.Linear | nn.Conv2d, b: Tensor):
        super().__init__()
        if not isinstance(base, nn.Linear | nn.Conv2d):
            raise TypeError(f"PaRa adapts nn.Linear and nn.Conv2d, not {type(base).__name__}")
        m, r = b.shape
        if m != out_features(base):
            raise ValueError(f"B has {m} rows but the layer has {out_features(base)} output features")
        if not 0 < r < m:
            raise ValueError(f"PaRa rank {r} out of range for a layer with {m} output features (need 0 < r < {m})")
        self.base = base
        self.para_B = nn.Parameter(b.float())
        self.merged = False
        # W0 itself while merged: unmerge puts it back bit for bit. Recomputing W + Q(QᵀW0) in a bf16 weight would
        # round W0 afresh at every validation grid, so the frozen weights would drift during training.
        self._w0: Tensor | None = None

    @property
    def rank(self) -> int:
        return self.para_B.shape[1]

    def basis(self) -> Tensor:
        return orthonormal_basis(self.para_B)

    def _current_basis(self) -> Tensor:
        """The shared Q while B is the one it was computed from (an optimizer step since makes it stale), else
        this layer's own QR."""
        shared = self.shared_basis
        if shared is not None and shared[1] == self.para_B._version:
            return shared[0]
        return self.basis()

    def _conv_args(self) -> ConvArgs:
        """None for Linear; (stride, padding, dilation, groups) for Conv2d."""
        if isinstance(self.base, nn.Linear):
            return None
        conv = self.base
        if conv.padding_mode != "zeros":
            raise NotImplementedError("PaRa supports zero-padded convolutions (all of SDXL's)")
        return conv.stride, conv.padding, conv.dilation, conv.groups

    def _frozen_forward(self, x: Tensor) -> Tensor:
        """h = W0 x without the bias (the bias is added after the projection, unprojected)."""
        return frozen_output(x, self.base.weight, self._conv_args())

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base(x)
        # h − Q(Qᵀh); while training, through a function that saves x and Qᵀh instead of h (para_function.py).
        y = para_projection(x, self._current_basis(), self.base.weight, self._conv_args())
        bias = self.base.bias
        if bias is None:
            return y
        return y + (bias if isinstance(self.base, nn.Linear) else bias[:, None, None]).to(y.dtype)

    def reduced_weight(self) -> Tensor:
        """(I − QQᵀ) W0 in the layer's weight shape, computed in float32."""
        w = flat_weight(self.base).float()
        q = self.basis().to(w.device)
        return (w - q @ (q.T @ w)).reshape(self.base.weight.shape)

    @torch.no_grad()
    def merge(self) -> None:
        """Bake (I − QQᵀ)W0 into the frozen weight: sampling then costs exactly the base model."""
        if self.merged:
            return
        self._w0 = swap_weight(self.base, self.reduced_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put W0 back, exactly."""
        if not self.merged:
            return
        swap_weight(self.base, self._w0)
        self._w0 = None
        self.merged = False
