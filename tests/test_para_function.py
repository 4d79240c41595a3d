"""The memory-lean PaRa autograd function against plain autograd, finite differences and peft's DeFT-PaRa."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from para.function import ParaProjection, frozen_output, lean_pays, project_out
from para.layers import PaRaLayer, orthonormal_basis

CASES = {
    "linear": (lambda: nn.Linear(12, 10), (2, 5, 12)),
    "conv": (lambda: nn.Conv2d(6, 10, 3, padding=1), (2, 6, 7, 7)),
    "conv_stride_dilation": (lambda: nn.Conv2d(6, 10, 3, padding=2, stride=2, dilation=2), (1, 6, 9, 8)),
    "conv_1x1_wide": (lambda: nn.Conv2d(16, 10, 1), (2, 16, 4, 4)),
}


def _layer(kind: str, dtype=torch.float64) -> tuple[PaRaLayer, torch.Tensor]:
    torch.manual_seed(0)
    make, x_shape = CASES[kind]
    base = make().to(dtype).requires_grad_(False)
    layer = PaRaLayer(base, torch.randn(10, 3) * 0.5)
    return layer, torch.randn(*x_shape, dtype=dtype)


def _forward(layer: PaRaLayer, x: torch.Tensor, path: str) -> torch.Tensor:
    """path: `plain` (the textbook formula through autograd: h is saved), `lean` (ParaProjection), `layer`."""
    if path == "layer":
        return layer(x)
    conv = layer._conv_args()
    if path == "plain":
        y = project_out(layer._frozen_forward(x), layer.basis(), conv)[0]
    else:
        y = ParaProjection.apply(x, layer.basis(), layer.base.weight, conv)
    if layer.base.bias is None:
        return y
    return y + (layer.base.bias if conv is None else layer.base.bias[:, None, None]).to(y.dtype)


def _grads(layer: PaRaLayer, x: torch.Tensor, path: str, upstream: torch.Tensor | None = None):
    layer.para_B.grad = None
    x = x.clone().requires_grad_(True)
    y = _forward(layer, x, path)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype) if upstream is None else upstream
    y.backward(g)
    return y.detach(), x.grad, layer.para_B.grad.clone()


@pytest.mark.parametrize("kind", sorted(CASES))
def test_matches_plain_autograd_float64(kind):
    layer, x = _layer(kind)
    (y, dx, db), (y_ref, dx_ref, db_ref) = _grads(layer, x, "lean"), _grads(layer, x, "plain")
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-10, atol=1e-12)
    # B and Q are float32 by design (QR in float32): their gradients agree to float32 rounding.
    torch.testing.assert_close(db, db_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_gradcheck_against_finite_differences(kind):
    layer, x = _layer(kind)
    q = orthonormal_basis(layer.para_B).double().requires_grad_(True)
    x = x[:1] if x.dim() == 3 else x[:1, :, :4, :4].contiguous()  # small: two evaluations per input element
    x.requires_grad_(True)
    conv = layer._conv_args()
    # full mode: fast mode missed a 1 % error in ∂L/∂x when tried
    assert torch.autograd.gradcheck(lambda x, q: ParaProjection.apply(x, q, layer.base.weight, conv), (x, q))


def test_linear_gradient_matches_peft_deft_para():
    """peft's DeftConfig(para=True, decomposition_method='qr') trains the same B: same output, same ∂L/∂B."""
    from peft import DeftConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = inject_adapter_in_model(
        DeftConfig(r=4, para=True, decomposition_method="qr", target_modules=["0"]), nn.Sequential(nn.Linear(24, 32))
    )
    deft = model[0]
    ours = PaRaLayer(deft.get_base_layer(), deft.deft_P["default"].detach().clone())
    x = torch.randn(5, 7, 24)
    g = torch.randn(5, 7, 32)
    model(x).backward(g)
    y, _, grad_b = _grads(ours, x, "lean", upstream=g)
    torch.testing.assert_close(y, model(x).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_b, deft.deft_P["default"].grad, rtol=1e-4, atol=1e-6)


def _saved_bytes(fn) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_saves_x_and_s_but_never_h(kind):
    layer, x = _layer(kind, torch.float32)
    x = x.repeat(8, *([1] * (x.dim() - 1))).requires_grad_(True)  # activations dominate the weights
    conv = layer._conv_args()
    h_bytes = frozen_output(x, layer.base.weight, conv).numel() * 4
    assert lean_pays(x, layer.base.weight, conv)  # so the layer itself takes the lean path
    lean = _saved_bytes(lambda: layer(x))
    plain = _saved_bytes(lambda: _forward(layer, x, "plain"))
    assert lean <= plain - h_bytes + x.numel() * 4 * (conv is None)  # Linear: x replaces h; conv kept x already


def test_lean_only_where_positions_outnumber_inputs():
    w = torch.zeros(10, 12)
    assert lean_pays(torch.zeros(2, 6, 12), w, None) and not lean_pays(torch.zeros(1, 11, 12), w, None)
    k = torch.zeros(10, 6, 3, 3)  # n = 54 inputs per output position
    assert lean_pays(torch.zeros(1, 6, 8, 8), k, ((1, 1), (1, 1), (1, 1), 1))
    assert not lean_pays(torch.zeros(1, 6, 8, 8), k, ((2, 2), (1, 1), (1, 1), 1))  # 16 positions


def test_bf16_autocast_close_to_plain_and_grad_dtypes():
    layer, x = _layer("conv", torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, dx, db = _grads(layer, x, "lean")
        y_ref, dx_ref, db_ref = _grads(layer, x, "plain")
    assert y.dtype == torch.bfloat16 and dx.dtype == torch.float32 and db.dtype == torch.float32
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=0, atol=0)  # same forward ops
    torch.testing.assert_close(dx, dx_ref, rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(db, db_ref, rtol=5e-2, atol=5e-2)


def test_plain_path_when_no_grad_or_grouped():
    layer, x = _layer("conv")
    want = _grads(layer, x, "plain")[0]
    with torch.no_grad():
        torch.testing.assert_close(layer(x), want)
    grouped = PaRaLayer(nn.Conv2d(4, 8, 3, padding=1, groups=2).double().requires_grad_(False), torch.randn(8, 2))
    x = torch.randn(4, 4, 5, 5, dtype=torch.float64)
    for got, want in zip(_grads(grouped, x, "layer"), _grads(grouped, x, "plain"), strict=True):
        torch.testing.assert_close(got, want)
