"""PaRa layer math against independent oracles (PAPER.md §1): peft's DeFT-PaRa, explicit merged weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from para.adapter import PaRa, effective_rank
from para.layers import PaRaLayer, orthonormal_basis

torch.manual_seed(0)


def _b(m: int, r: int) -> torch.Tensor:
    return torch.randn(m, r, dtype=torch.float64) * 0.02


def test_linear_matches_peft_deft_para():
    """peft's DeftConfig(para=True, decomposition_method='qr') is PaRa for nn.Linear: same B, same output."""
    from peft import DeftConfig, inject_adapter_in_model

    base = nn.Sequential(nn.Linear(24, 32))
    b = torch.randn(32, 4)
    model = inject_adapter_in_model(DeftConfig(r=4, para=True, decomposition_method="qr", target_modules=["0"]), base)
    deft = model[0]
    with torch.no_grad():
        deft.deft_P["default"].copy_(b)
    ours = PaRaLayer(deft.get_base_layer(), b.clone())
    x = torch.randn(5, 7, 24)
    torch.testing.assert_close(ours(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "conv", "conv_stride"])
def test_output_equals_explicit_reduced_weight_float64(kind):
    """y = ((I − QQᵀ) W0) x + b, with the conv kernel flattened to c_out × (c_in·k²)."""
    if kind == "linear":
        base, x = nn.Linear(20, 16).double(), torch.randn(3, 20, dtype=torch.float64)
    else:
        stride = 2 if kind == "conv_stride" else 1
        base = nn.Conv2d(6, 16, 3, padding=1, stride=stride).double()
        x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    b = _b(16, 3)
    layer = PaRaLayer(base, b)
    q, _ = torch.linalg.qr(b)
    w0 = base.weight.reshape(16, -1)
    reduced = ((torch.eye(16, dtype=torch.float64) - q @ q.T) @ w0).reshape(base.weight.shape)
    if kind == "linear":
        expected = nn.functional.linear(x, reduced, base.bias)
    else:
        expected = nn.functional.conv2d(x, reduced, base.bias, base.stride, base.padding)
    # the layer computes Q in float32 (by design), so agreement is to float32 precision
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.reduced_weight().double(), reduced, rtol=1e-5, atol=1e-6)


def test_q_orthonormal_and_rank_drops_by_r():
    base = nn.Linear(32, 32, bias=False).double()
    layer = PaRaLayer(base, _b(32, 5))
    q = layer.basis()
    torch.testing.assert_close(q.T @ q, torch.eye(5), rtol=0, atol=1e-5)
    assert torch.linalg.matrix_rank(base.weight).item() == 32
    assert torch.linalg.matrix_rank(layer.reduced_weight().double(), atol=1e-4).item() == 32 - 5
    wide = nn.Linear(64, 16, bias=False)  # wide W0: rank d_out - r as well
    assert torch.linalg.matrix_rank(PaRaLayer(wide, _b(16, 3)).reduced_weight(), atol=1e-4).item() == 13


def test_bias_is_not_projected():
    base = nn.Linear(8, 8)
    with torch.no_grad():
        base.weight.zero_()
    layer = PaRaLayer(base, _b(8, 2))
    torch.testing.assert_close(layer(torch.randn(3, 8)), base.bias.expand(3, 8))


def test_merge_unmerge_round_trip():
    base = nn.Conv2d(4, 12, 3, padding=1)
    w0 = base.weight.detach().clone()
    layer = PaRaLayer(base, _b(12, 2))
    x = torch.randn(1, 4, 6, 6)
    unmerged = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, rtol=1e-6, atol=1e-6)


def test_gamma_cap():
    assert effective_rank(16, 320, 1 / 40) == 8
    assert effective_rank(16, 640, 1 / 40) == 16
    assert effective_rank(64, 1280, 1 / 40) == 32
    assert effective_rank(16, 320, None) == 16
    assert effective_rank(4, 32, 1 / 40) == 1  # reading: at least one direction on narrow layers


def test_rank_out_of_range_is_refused():
    with pytest.raises(ValueError, match="out of range"):
        PaRaLayer(nn.Linear(4, 4), _b(4, 4))


def test_qr_in_float32_under_bf16_autocast():
    base = nn.Linear(16, 32).to(torch.bfloat16)
    layer = PaRaLayer(base, torch.randn(32, 4) * 0.02)
    x = torch.randn(2, 16, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        assert layer.basis().dtype == torch.float32
    y.float().sum().backward()
    assert torch.isfinite(y.float()).all() and torch.isfinite(layer.para_B.grad).all()
    assert layer.para_B.grad.dtype == torch.float32


def test_weakest_init_changes_output_least(tiny_pipe):
    """`weakest` starts in W0's weakest output directions: it moves a layer's output less than a random B."""
    torch.manual_seed(0)
    layer = nn.Linear(48, 64)
    x = torch.randn(16, 48)
    ref = layer(x)
    moved = {}
    for init in ("gaussian", "weakest"):
        para = PaRa({"rank": 4, "gamma": None, "subset": [r"lin"], "init": init}, "test")
        model = nn.Module()
        model.lin = nn.Linear(48, 64)
        model.lin.load_state_dict(layer.state_dict())
        para.attach(model)
        moved[init] = (model.lin(x) - ref).norm().item() / ref.norm().item()
    assert moved["weakest"] < moved["gaussian"]


def test_subset_counts_on_tiny_unet(tiny_pipe):
    from para.core.subsets import select_modules

    unet = tiny_pipe.unet
    names = select_modules(unet, "noxattn")
    assert not any("attn2" in n for n in names)
    assert all(n.endswith(("to_q", "to_k", "to_v", "to_out.0")) for n in select_modules(unet, "selfattn"))
    n_self, n_x = len(select_modules(unet, "selfattn")), len(select_modules(unet, "xattn"))
    assert len(select_modules(unet, "attn")) == n_self + n_x
    with pytest.raises(ValueError, match="matches no"):
        select_modules(unet, [r"no_such_module"])
    with pytest.raises(ValueError, match="unknown layer subset"):
        select_modules(unet, "exca")


def test_orthonormal_basis_is_float32_for_half_input():
    assert orthonormal_basis(torch.randn(8, 2, dtype=torch.bfloat16)).dtype == torch.float32


def test_export_merged_unet_loads_in_stock_diffusers(quick_cfg, tmp_path):
    """A PaRa run exported as a plain diffusers UNet gives the outputs of the PaRa model."""
    from diffusers import UNet2DConditionModel
    from omegaconf import OmegaConf

    from para.core.models import load_pipeline, model_id
    from para.export import export
    from para.run.runner import execute

    cfg = quick_cfg("method.lr=1e-2", "eval.enabled=false", "sample.enabled=false")
    execute(cfg)
    out = export(tmp_path / "run", tmp_path / "unet", "merged", "fp32")
    plain = UNet2DConditionModel.from_pretrained(out)
    assert not any("para" in n for n, _ in plain.named_parameters())
    run_cfg = OmegaConf.load(tmp_path / "run" / "config.yaml")
    pipe = load_pipeline(run_cfg.model, torch.device("cpu"))
    para = PaRa(run_cfg.method, model_id(run_cfg.model))
    para.attach(pipe.unet)
    para.load_file(pipe.unet, tmp_path / "run" / "adapter.safetensors")
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300])
    emb, kw = torch.randn(1, 77, 96), {"text_embeds": torch.randn(1, 64), "time_ids": torch.ones(1, 6) * 64}
    with torch.no_grad():
        expected = pipe.unet(x, t, encoder_hidden_states=emb, added_cond_kwargs=kw).sample
        got = plain(x, t, encoder_hidden_states=emb, added_cond_kwargs=kw).sample
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_non_finite_loss_stops_with_a_clear_message(tiny_pipe):
    from conftest import compose_config

    from para.core.trainer import Trainer, TrainingError

    cfg = compose_config("model=tiny", "run_dir=x", "steps=2")
    para = PaRa(cfg.method, "x")
    params = para.attach(tiny_pipe.unet)

    class NaNLatents:
        def sample(self, generator, batch):
            return torch.full((batch, 4, 8, 8), float("nan"))

    with pytest.raises(TrainingError, match="lower method.lr"):
        Trainer(tiny_pipe, para, params, cfg).train(NaNLatents(), "a photo of sks dog", 64)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_pipe_template):
    import copy

    from conftest import compose_config

    from para.core.conditioning import encode_prompt
    from para.core.trainer import Trainer, step_generator

    grads = []
    for checkpointing in ("false", "true"):
        pipe = copy.deepcopy(tiny_pipe_template)
        cfg = compose_config("model=tiny", "run_dir=x", f"train.gradient_checkpointing={checkpointing}")
        torch.manual_seed(0)
        para = PaRa(cfg.method, "x")
        params = para.attach(pipe.unet)
        trainer = Trainer(pipe, para, params, cfg)
        pipe.unet.train()
        g = step_generator(0, 0)
        loss = trainer._loss(torch.randn(1, 4, 8, 8, generator=g), encode_prompt(pipe, "a dog", 64), g)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in params]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_with_adam_the_scale_of_b_acts_as_the_learning_rate():
    """Q = qr(B) ignores the scale of B, the gradient scales as 1/scale, Adam's step does not depend on the
    gradient's scale: (init_std k·σ, lr k·η) trains exactly the Q of (σ, η) — and (k·σ, η) trains k× slower.
    The reading behind the ablations' init × lr sweep (docs/methods.md)."""
    torch.manual_seed(0)
    base = nn.Linear(24, 32)
    b0 = torch.randn(32, 4) * 0.02
    x, target = torch.randn(16, 24), torch.randn(16, 32)

    def train(scale: float, lr: float) -> torch.Tensor:
        layer = PaRaLayer(base, b0 * scale)
        opt = torch.optim.Adam([layer.para_B], lr=lr, eps=1e-30)  # eps ≈ 0: Adam's step is scale-free
        for _ in range(5):
            opt.zero_grad()
            ((layer(x) - target) ** 2).mean().backward()
            opt.step()
        return layer.basis()

    reference = train(1.0, 1e-3)
    torch.testing.assert_close(train(10.0, 1e-2), reference, rtol=0, atol=1e-5)
    assert (train(10.0, 1e-3) - reference).abs().max() > 1e-3
