"""Math oracles of the extra methods (svdiff, para_authors, loha, lokr, oft); test_methods.py has the invariants.

Layer oracles are computed independently in float64 from W0; SDXL counts are taken on the real architecture on
the meta device (no weights) with each method's YAML defaults, i.e. the numbers the YAML comments state.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from peft.tuners.lokr.layer import factorization
from peft.tuners.oft.layer import Conv2d as PeftOftConv2d
from torch import nn

from baselines.lycoris import Oft, oft_input_dim
from baselines.oft_conv import OftConv2dByWeight
from baselines.para_authors import ParaAuthors, ParaAuthorsLayer
from baselines.svdiff import SVDiff, SVDiffLayer
from para.adapter import PaRa, effective_rank
from para.bench.param_count import build_sdxl_unet_meta, lora_params
from para.core.conditioning import encode_prompt
from para.core.subsets import select_modules
from para.layers import PaRaLayer, out_features
from para.layerwise import apply_weight
from para.run.registry import METHODS

LAYERS = {  # tall and wide matrices, a strided 3×3 conv with padding, a 1×1 conv
    "linear_tall": lambda: nn.Linear(24, 40),
    "linear_wide": lambda: nn.Linear(40, 12),
    "conv3x3_stride2": lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1),
    "conv1x1": lambda: nn.Conv2d(12, 8, 1),
}


def _layer_and_input(kind: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    layer = LAYERS[kind]()
    with torch.no_grad():
        layer.bias.normal_()  # a visible bias, so "the bias is not projected" is tested
    x = (
        torch.randn(3, 5, layer.in_features)
        if isinstance(layer, nn.Linear)
        else torch.randn(2, layer.in_channels, 9, 9)
    )
    return layer, x


def _f64(base: nn.Module, x: torch.Tensor, flat_weight: torch.Tensor) -> torch.Tensor:
    """base's operation in float64 with an explicitly given (flattened) weight and base's own bias."""
    return apply_weight(base, x.double(), flat_weight.reshape(base.weight.shape), base.bias.double())


def _unet_out(pipe) -> torch.Tensor:
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = encode_prompt(pipe, "a photo of sks dog", 64)
    with torch.no_grad():
        return pipe.unet(
            latents,
            torch.tensor([500]),
            encoder_hidden_states=cond.prompt_embeds,
            added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": cond.time_ids},
        ).sample


# --- svdiff -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_svdiff_layer_is_the_spectrally_shifted_weight(kind):
    base, x = _layer_and_input(kind)
    layer = SVDiffLayer(copy.deepcopy(base))
    with torch.no_grad():
        assert torch.equal(layer(x), base(x))  # δ = 0 reproduces W0's output bit for bit
    w0 = base.weight.detach().double().reshape(out_features(base), -1)
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)  # the oracle's own float64 SVD
    with torch.no_grad():
        layer.svdiff_delta.copy_(torch.randn(s.shape[0]) * s.mean().float())
    delta = layer.svdiff_delta.detach().double()
    assert (s + delta < 0).any() and (s + delta > 0).any()  # the ReLU clips some shifted values, not all
    expected = _f64(base, x, (u * F.relu(s + delta)) @ vh)
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-4, atol=1e-4)  # float32 vs float64
        layer.merge()  # sampling form: the plain layer with W baked in
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-4, atol=1e-4)
        layer.unmerge()
    torch.testing.assert_close(layer.base.weight, base.weight, rtol=0, atol=1e-6)


def test_svdiff_saves_only_the_shifts(tiny_pipe):
    unet = tiny_pipe.unet
    modules = select_modules(unet, "noxattn")
    expected = sum(min(m.weight.shape[0], m.weight[0].numel()) for m in modules.values())
    method = SVDiff({"subset": "noxattn"}, "tiny")
    params = method.attach(unet)
    state = method.state_dict(unet)
    assert len(state) == len(modules) and all(k.endswith(".svdiff_delta") for k in state)
    assert sum(p.numel() for p in params) == sum(v.numel() for v in state.values()) == expected
    assert not any(k.rsplit(".", 1)[-1] in ("svd_U", "svd_S", "svd_Vh") for k in unet.state_dict())  # cached only


# --- para_authors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_para_authors_layer_starts_as_para_then_is_w0_minus_ud(kind):
    base, x = _layer_and_input(kind)
    b = torch.randn(out_features(base), 3) * 0.02
    para, authors = PaRaLayer(copy.deepcopy(base), b), ParaAuthorsLayer(copy.deepcopy(base), b)
    q, _ = torch.linalg.qr(b.double())
    w0 = base.weight.detach().double().reshape(out_features(base), -1)
    expected = _f64(base, x, w0 - q @ (q.T @ w0))  # W0x − QQᵀW0x + b (bias unprojected)
    with torch.no_grad():
        torch.testing.assert_close(authors(x).double(), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(authors(x), para(x), rtol=1e-5, atol=1e-5)
        authors.para_U.add_(0.1 * torch.randn_like(authors.para_U))  # U and D now move independently
        authors.para_D.add_(0.1 * torch.randn_like(authors.para_D))
        u, d = authors.para_U.double(), authors.para_D.double()
        expected = _f64(base, x, w0 - u @ d)
        torch.testing.assert_close(authors(x).double(), expected, rtol=1e-5, atol=1e-5)
        authors.merge()
        torch.testing.assert_close(authors(x).double(), expected, rtol=1e-5, atol=1e-5)
        assert (authors(x) - para(x)).abs().max() > 1e-2  # no longer a projection


def test_para_authors_method_at_step0_equals_para(tiny_pipe_template):
    """Same seed → same B0 per layer, same γ-capped ranks → the same UNet output; LoRA's count at those ranks."""
    cfg = {"rank": 4, "gamma": 1 / 32, "subset": "noxattn"}  # tiny widths 64/128: the cap gives ranks 2 and 4
    outputs, methods = {}, {}
    for cls in (PaRa, ParaAuthors):
        pipe = copy.deepcopy(tiny_pipe_template)
        torch.manual_seed(7)
        methods[cls.name] = cls(cfg, "tiny")
        params = methods[cls.name].attach(pipe.unet)
        outputs[cls.name] = _unet_out(pipe)
        if cls is ParaAuthors:
            modules = select_modules(tiny_pipe_template.unet, "noxattn")
            expected = sum(lora_params(m, effective_rank(4, out_features(m), 1 / 32)) for m in modules.values())
            assert sum(p.numel() for p in params) == expected
    assert methods["para"].ranks == methods["para_authors"].ranks
    assert set(methods["para"].ranks.values()) == {2, 4}
    torch.testing.assert_close(outputs["para_authors"], outputs["para"], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(outputs["para"], _unet_out(tiny_pipe_template), atol=1e-4)  # PaRa is no identity


# --- loha / lokr / oft ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["svdiff", "loha", "lokr", "oft"])
def test_identity_at_start(tiny_pipe, name):
    """These methods start from the base model exactly (PaRa and para_authors remove r directions at step 0)."""
    expected = _unet_out(tiny_pipe)
    method = METHODS[name](compose_config(f"method={name}", "run_dir=unused").method, "tiny")
    method.attach(tiny_pipe.unet)
    torch.testing.assert_close(_unet_out(tiny_pipe), expected, rtol=0, atol=1e-6)


def _oft_conv(pipe, block_size: int = 16) -> tuple[OftConv2dByWeight, torch.Tensor]:
    Oft({"block_size": block_size, "subset": "noxattn"}, "tiny").attach(pipe.unet)
    layer = pipe.unet.get_submodule("down_blocks.0.downsamplers.0.conv")  # 3×3, stride 2, padding 1
    assert isinstance(layer, OftConv2dByWeight)
    x = torch.randn(2, layer.in_features, 9, 9, generator=torch.Generator().manual_seed(0))
    return layer, x


def test_oft_conv_runs_the_rotated_weight(tiny_pipe):
    layer, x = _oft_conv(tiny_pipe)
    rotation = layer.oft_R["default"]
    with torch.no_grad():
        rotation.weight.normal_(0, 0.1)
        r = rotation.get_weight().double()  # peft's dense block-diagonal R (n·k² × n·k²), via its public path
        w0 = layer.get_base_layer().weight.double().reshape(layer.out_features, -1)
        expected = _f64(layer.get_base_layer(), x, w0 @ r.T)
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-4, atol=1e-5)
        layer.merge()  # peft's own merge writes the same weight
        torch.testing.assert_close(layer(x).double(), expected, rtol=1e-4, atol=1e-5)


def test_peft_oft_conv_forward_is_still_wrong(tiny_pipe):
    """Why OftConv2dByWeight exists: peft's unfold/fold forward is not the base conv even at R = I.

    If this fails after a peft upgrade, peft fixed its k×k conv forward and OftConv2dByWeight can go.
    """
    layer, x = _oft_conv(tiny_pipe)
    with torch.no_grad():
        base_out = layer.get_base_layer()(x)
        torch.testing.assert_close(layer(x), base_out, rtol=0, atol=1e-6)
        assert (PeftOftConv2d.forward(layer, x) - base_out).abs().max() > 1e-1


def test_oft_refuses_a_block_size_that_does_not_divide(tiny_pipe):
    with pytest.raises(ValueError, match="block_size=48 does not divide"):
        Oft({"block_size": 48, "subset": "noxattn"}, "tiny").attach(tiny_pipe.unet)


def _lokr_params(module: nn.Module, rank: int, factor: int) -> int:
    """W1 (full) + W2 (full, or rank-r factors when r < half its larger side), per peft's LoKr shapes."""
    kernel = module.kernel_size[0] * module.kernel_size[1] if isinstance(module, nn.Conv2d) else 1
    (a, b), (c, d) = factorization(out_features(module), factor), factorization(module.weight.shape[1], factor)
    w2 = b * d * kernel if rank >= max(b, d) / 2 else rank * (b + d * kernel)
    return a * c + w2


def _oft_params(module: nn.Module, block: int) -> int:
    return oft_input_dim(module) // block * block * (block - 1) // 2  # one skew-symmetric b×b block per b inputs


# Trainable parameters on SDXL ExCA with each YAML's defaults (also stated in the YAML comments and the README).
SDXL_EXCA = {
    "para": (6_120_960, None),
    "lora": (17_280_000, lambda m, c: lora_params(m, c.rank)),
    "svdiff": (384_640, lambda m, c: min(m.weight.shape[0], m.weight[0].numel())),
    "loha": (17_280_000, lambda m, c: lora_params(m, 2 * c.rank)),  # 2·r·(d_out + d_in·k²)
    "lokr": (17_336_736, lambda m, c: _lokr_params(m, c.rank, c.decompose_factor)),
    "oft": (10_763_200, lambda m, c: _oft_params(m, c.block_size)),
    "para_authors": (16_816_640, lambda m, c: lora_params(m, effective_rank(c.rank, out_features(m), c.gamma))),
}


@pytest.fixture(scope="module")
def sdxl_meta():
    return build_sdxl_unet_meta()


@pytest.mark.parametrize("name", sorted(SDXL_EXCA))
def test_sdxl_exca_trainable_params(sdxl_meta, name):
    expected, formula = SDXL_EXCA[name]
    cfg = compose_config(f"method={name}", "run_dir=unused").method
    unet = copy.deepcopy(sdxl_meta)  # methods change the UNet in place
    modules = select_modules(unet, "noxattn")
    if formula is not None:
        assert sum(formula(m, cfg) for m in modules.values()) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. peft adjusting an OFT block size would be a silent change
        params = METHODS[name](cfg, "sdxl").attach(unet)
    assert sum(p.numel() for p in params) == expected
    assert sum(p.numel() for p in unet.parameters() if p.requires_grad) == expected
