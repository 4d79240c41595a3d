"""PaRa's projection as one autograd function that saves x and s = Qᵀh, never h (DESIGN.md, last bullet).

    h = W0 x    s = Qᵀh    y = h − Q s          (bias added by the caller, unprojected)

Plain autograd keeps `h` (m values per token) for the gradient of Q; LoRA keeps its input x instead, which the
frozen conv keeps anyway and which attention's q/k/v projections share. Saving x and s makes PaRa's saved
activations the same as LoRA's (x, plus r values per token). With upstream gradient g and gq = Qᵀg:

    ∂L/∂h = g − Q gq                                   → ∂L/∂x by the frozen layer's input gradient
    ∂L/∂Q = −(Σₜ gₜ sₜᵀ + Σₜ hₜ gqₜᵀ),   Σₜ hₜ gqₜᵀ = W0 · Σₜ xₜ gqₜᵀ
                                              (conv: a weight gradient with r output channels, then W0 ·)

The price: Σₜ xₜ gqₜᵀ (t·n·r) and one W0 · (n × r) product (m·n·r, independent of resolution) where plain
autograd spends t·m·r, over t output positions with n inputs each. So the lean function is used only where
t ≥ n: there its extra arithmetic is at most ~r/n of the layer's own (2.5 % at SDXL's r/n), and there the
activations are large enough for the memory to matter (SDXL at 1024 px: the 128² and 64² blocks). Below, at
low resolution, plain autograd is faster and `h` is small. Numerically it is the plain formula reordered;
`tests/test_para_function.py` checks it against autograd, finite differences and peft's DeFT-PaRa.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_input, conv2d_weight

# (stride, padding, dilation, groups) of a Conv2d; None for a Linear
ConvArgs = tuple[tuple[int, int], tuple[int, int] | str, tuple[int, int], int] | None


def frozen_output(x: Tensor, weight: Tensor, conv: ConvArgs) -> Tensor:
    """h = W0 x without bias (Linear when `conv` is None)."""
    if conv is None:
        return F.linear(x, weight)
    stride, padding, dilation, groups = conv
    return F.conv2d(x, weight, None, stride, padding, dilation, groups)


def project_out(h: Tensor, q: Tensor, conv: ConvArgs) -> tuple[Tensor, Tensor]:
    """(y, s): y = h − Q(Qᵀh) over the feature axis (last for Linear, channels for Conv2d), s = Qᵀh."""
    q = q.to(h.dtype)
    if conv is None:
        s = h @ q  # (..., m) @ (m, r) -> (..., r)
        return h - s @ q.T, s
    s = torch.einsum("bchw,cr->brhw", h, q)  # (B, r, H, W)
    return h - torch.einsum("brhw,cr->bchw", s, q), s


class ParaProjection(torch.autograd.Function):
    """y = (I − QQᵀ) W0 x for a frozen W0. Inputs: x, Q (float32, m × r), W0, conv args (None for Linear)."""

    @staticmethod
    def forward(ctx, x: Tensor, q: Tensor, weight: Tensor, conv: ConvArgs) -> Tensor:
        h = frozen_output(x, weight, conv)  # under autocast: in the autocast dtype, like the plain layer
        y, s = project_out(h, q, conv)
        # The input in the dtype the frozen layer computed in (the same tensor when no cast happens).
        ctx.save_for_backward(x.to(h.dtype), q, weight, s)
        ctx.conv, ctx.x_dtype = conv, x.dtype
        return y

    @staticmethod
    def backward(ctx, g: Tensor):
        x, q, weight, s = ctx.saved_tensors
        conv = ctx.conv
        g = g.to(s.dtype)
        w, qc = weight.to(s.dtype), q.to(s.dtype)
        if conv is None:
            gq = g @ qc  # (..., r)
            dx = (g - gq @ qc.T) @ w if ctx.needs_input_grad[0] else None
            t_g, t_s, t_x, t_gq = (a.reshape(-1, a.shape[-1]) for a in (g, s, x, gq))
            dq = -(t_g.T @ t_s + w @ (t_x.T @ t_gq))  # (m, r)
        else:
            stride, padding, dilation, groups = conv
            gq = torch.einsum("bchw,cr->brhw", g, qc)  # (B, r, H, W)
            dx = None
            if ctx.needs_input_grad[0]:
                dh = g - torch.einsum("brhw,cr->bchw", gq, qc)
                dx = conv2d_input(x.shape, w, dh, stride, padding, dilation, groups)
            # Σ_pixels unfold(x) gqᵀ is the weight gradient of a conv with r output channels.
            xg = conv2d_weight(x, (gq.shape[1], *w.shape[1:]), gq, stride, padding, dilation, groups)
            dq = -(torch.einsum("bchw,brhw->cr", g, s) + w.reshape(w.shape[0], -1) @ xg.reshape(xg.shape[0], -1).T)
        return (None if dx is None else dx.to(ctx.x_dtype)), dq.to(q.dtype), None, None


def lean_pays(x: Tensor, weight: Tensor, conv: ConvArgs) -> bool:
    """Whether the layer has at least as many output positions (tokens × batch, pixels × batch) as inputs n."""
    n = weight[0].numel()  # in_features, or c_in·k_h·k_w
    if conv is None:
        return x.numel() // x.shape[-1] >= n
    stride = conv[0]
    return x.shape[0] * x.shape[-2] * x.shape[-1] // (stride[0] * stride[1]) >= n


def para_projection(x: Tensor, q: Tensor, weight: Tensor, conv: ConvArgs) -> Tensor:
    """y = (I − QQᵀ) W0 x; the memory-lean function where it pays (`lean_pays`), plain autograd otherwise.

    Plain autograd is also used when nothing needs Q's gradient (sampling), when W0 itself trains, and for grouped
    or string-padded convolutions (the gradient functions above take neither; SDXL has none).
    """
    plain_conv = conv is None or (conv[3] == 1 and not isinstance(conv[1], str))  # no groups, no "same" padding
    lean = torch.is_grad_enabled() and q.requires_grad and not weight.requires_grad and plain_conv
    if lean and lean_pays(x, weight, conv):
        return ParaProjection.apply(x, q, weight, conv)
    return project_out(frozen_output(x, weight, conv), q, conv)[0]
