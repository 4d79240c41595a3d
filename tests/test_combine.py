"""Combining adapters (para/combine.py) against explicit merged weights built from m × m projectors, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_config
from torch import nn

from para.adapter import PaRa
from para.combine import (
    LORA_ORDERS,
    MODES,
    CombinedPaRa,
    CombinedPaRaLayer,
    combine_bases,
    para_with_lora,
    union_basis,
)
from para.core.method import AdapterFileError, read_adapter_file
from para.core.models import model_id
from para.layers import PaRaLayer, orthonormal_basis

M = 12  # output features of the test layers


def _basis(rank: int, seed: int, m: int = M) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64))[0]


def _projector(q: torch.Tensor) -> torch.Tensor:
    return q @ q.T


def _explicit(w0: torch.Tensor, bases: list[torch.Tensor], mode: str) -> torch.Tensor:
    """M·W0 with M an explicit m × m matrix; concat's union basis comes from numpy-free QR of [Q1, Q2]."""
    eye = torch.eye(w0.shape[0], dtype=torch.float64)
    if mode == "concat":
        union = torch.linalg.qr(torch.cat(bases, dim=1))[0]
        return (eye - _projector(union)) @ w0
    if mode == "sequential":
        out = w0
        for q in bases:
            out = (eye - _projector(q)) @ out
        return out
    return (eye - sum(_projector(q) for q in bases)) @ w0


def _layer(kind: str) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.Linear(7, M) if kind == "linear" else nn.Conv2d(3, M, 3, padding=1)
    return layer.double()


def _input(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (4, 7) if kind == "linear" else (2, 3, 5, 5)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _apply(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight.reshape(layer.weight.shape), layer.bias, padding=1)


def test_union_basis_is_orthonormal_and_spans_both():
    q1, q2 = _basis(2, 0), _basis(3, 1)
    u = union_basis([q1, q2])
    assert u.shape == (M, 5) and u.dtype == torch.float64
    torch.testing.assert_close(u.T @ u, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        _projector(u), _projector(torch.linalg.qr(torch.cat([q1, q2], 1))[0]), atol=1e-12, rtol=0
    )


def test_union_basis_removes_a_shared_direction_once():
    q1 = _basis(2, 0)
    q2 = torch.linalg.qr(torch.cat([q1[:, :1], _basis(1, 5)], 1))[0]  # shares q1's first direction
    u = union_basis([q1, q2])
    assert u.shape[1] == 3  # not 4: QR of [Q1, Q2] would add an arbitrary unit vector here
    for q in (q1, q2):
        torch.testing.assert_close(_projector(u) @ q, q, atol=1e-12, rtol=0)


def test_union_basis_cap_trims_every_adapter_evenly():
    q1, q2 = _basis(3, 0), _basis(3, 1)
    u = union_basis([q1, q2], cap=2)
    assert u.shape[1] == 2
    p = _projector(u)
    # round-robin: the first direction of each adapter is kept, not the first two of adapter 1
    torch.testing.assert_close(p @ q1[:, 0], q1[:, 0], atol=1e-12, rtol=0)
    torch.testing.assert_close(p @ q2[:, 0], q2[:, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("mode", MODES)
def test_combined_layer_matches_explicit_weights(mode, kind):
    base = _layer(kind)
    w0 = base.weight.detach().reshape(M, -1).clone()
    bases = [_basis(2, 0), _basis(3, 1)]
    expected = _explicit(w0, bases, mode)
    layer = CombinedPaRaLayer(base, combine_bases(bases, mode), mode)
    x = _input(kind)
    torch.testing.assert_close(layer(x), _apply(base, expected, x), rtol=0, atol=1e-12)
    layer.merge()
    torch.testing.assert_close(base.weight.reshape(M, -1), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer(x), _apply(base, expected, x), rtol=0, atol=1e-12)
    layer.unmerge()
    torch.testing.assert_close(base.weight.reshape(M, -1), w0, rtol=0, atol=1e-12)


def test_modes_agree_for_orthogonal_bases_and_differ_otherwise():
    w0 = _layer("linear").weight.detach()
    q = _basis(4, 3)
    orthogonal = [q[:, :2], q[:, 2:]]
    results = [_explicit(w0, combine_bases(orthogonal, m), m) for m in MODES]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=0, atol=1e-12)
    overlapping = [_basis(2, 0), _basis(2, 1)]
    merged = {m: CombinedPaRaLayer(nn.Linear(7, M).double(), combine_bases(overlapping, m), m) for m in MODES}
    x = _input("linear")
    outs = {m: layer(x) for m, layer in merged.items()}
    assert not torch.allclose(outs["additive"], outs["sequential"])


def test_unknown_mode_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"'average'.*concat.*sequential.*additive"):
        combine_bases([_basis(1, 0), _basis(1, 1)], "average")


# --- files, on the tiny SDXL-shaped UNet --------------------------------------------------------------------------


def _unet_out(unet: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    embeds = torch.randn(1, 77, 96, generator=g)
    added = {"text_embeds": torch.randn(1, 64, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), encoder_hidden_states=embeds, added_cond_kwargs=added).sample


def _para_file(template, tmp_path, name: str, rank: int, seed: int, std: float = 0.5):
    cfg = compose_config("model=tiny", "method=para", f"method.rank={rank}", "method.gamma=null", "run_dir=unused")
    unet = copy.deepcopy(template.unet)
    method = PaRa(cfg.method, model_id(cfg.model))
    method.attach(unet)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in method.layers(unet).values():
            layer.para_B.copy_(torch.randn(layer.para_B.shape, generator=g) * std)
    return method, method.save(unet, tmp_path / f"{name}.safetensors"), cfg


def test_combined_adapter_saves_loads_and_caps_rank(tiny_pipe_template, tmp_path):
    _, a, cfg = _para_file(tiny_pipe_template, tmp_path, "a", 2, 0)
    _, b, _ = _para_file(tiny_pipe_template, tmp_path, "b", 8, 1)
    base = model_id(cfg.model)
    combined = CombinedPaRa.from_files([a, b], mode="concat", gamma=0.05)
    for name, (q,) in combined.bases.items():
        width = q.shape[0]
        assert q.shape[1] == min(10, max(1, int(width * 0.05))), name  # total rank capped by γ·d_out
    path = combined.save(None, tmp_path / "combined.safetensors")
    direct = copy.deepcopy(tiny_pipe_template.unet)
    combined.attach(direct)
    loaded_unet = copy.deepcopy(tiny_pipe_template.unet)
    loaded = CombinedPaRa.load(loaded_unet, path, base)
    assert read_adapter_file(path)[1]["method"] == "para_combined"
    torch.testing.assert_close(_unet_out(loaded_unet), _unet_out(direct), rtol=0, atol=0)
    loaded.prepare_for_sampling(loaded_unet, merge=True)  # the merged form samples the same model
    assert all(layer.merged for layer in loaded.layers(loaded_unet).values())
    torch.testing.assert_close(_unet_out(loaded_unet), _unet_out(direct), rtol=1e-4, atol=1e-5)
    with pytest.raises(AdapterFileError, match="para_combined"):
        CombinedPaRa.load(copy.deepcopy(tiny_pipe_template.unet), a, base)
    with pytest.raises(AdapterFileError, match="base model"):
        CombinedPaRa.load(copy.deepcopy(tiny_pipe_template.unet), path, "another-model")


def test_concat_of_an_adapter_with_itself_is_that_adapter(tiny_pipe_template, tmp_path):
    _, a, cfg = _para_file(tiny_pipe_template, tmp_path, "a", 2, 0)
    single = copy.deepcopy(tiny_pipe_template.unet)
    reloaded = PaRa(cfg.method, model_id(cfg.model))
    reloaded.attach(single)
    reloaded.load_file(single, a)
    twice = copy.deepcopy(tiny_pipe_template.unet)
    CombinedPaRa.from_files([a, a], mode="concat", gamma=None).attach(twice)
    torch.testing.assert_close(_unet_out(twice), _unet_out(single), rtol=1e-5, atol=1e-6)


# --- PaRa with a LoRA -----------------------------------------------------------------------------------------------


def _lora_file(template, tmp_path) -> str:
    from baselines.lora import Lora

    cfg = compose_config("model=tiny", "method=lora", "method.rank=4", "run_dir=unused")
    unet = copy.deepcopy(template.unet)
    method = Lora(cfg.method, model_id(cfg.model))
    params = method.attach(unet)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in params:  # B = 0 at init: give the LoRA a real delta
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return method.save(unet, tmp_path / "lora.safetensors")


@pytest.mark.parametrize("order", LORA_ORDERS)
def test_para_and_lora_orders_match_explicit_weights(tiny_pipe_template, tmp_path, order):
    _, para_path, cfg = _para_file(tiny_pipe_template, tmp_path, "p", 3, 0)
    lora_path = _lora_file(tiny_pipe_template, tmp_path)
    scale = 1.7
    pipe = copy.deepcopy(tiny_pipe_template)
    para_with_lora(pipe, PaRa(cfg.method, model_id(cfg.model)), para_path, lora_path, scale, order)
    reference = copy.deepcopy(tiny_pipe_template)
    reference.load_lora_weights(str(lora_path), adapter_name="ref")  # ΔW at scale 1, from peft
    bases = {
        k.removesuffix(".para_B"): orthonormal_basis(b).double() for k, b in read_adapter_file(para_path)[0].items()
    }
    checked = 0
    for name, q in bases.items():
        ref = reference.unet.get_submodule(name)
        if not hasattr(ref, "get_delta_weight"):
            continue
        w0 = tiny_pipe_template.unet.get_submodule(name).weight.double().reshape(q.shape[0], -1)
        delta = ref.get_delta_weight("ref").double().reshape(q.shape[0], -1)
        project = torch.eye(q.shape[0], dtype=torch.float64) - q @ q.T
        module = pipe.unet.get_submodule(name)
        assert not isinstance(module, PaRaLayer)  # PaRa is merged into plain weights for sampling
        if order == "para_then_lora":
            expected = project @ w0 + scale * delta
            adapter = module.active_adapters[0]
            got = module.base_layer.weight.double() + module.get_delta_weight(adapter).double()
        else:
            expected = project @ (w0 + scale * delta)
            got = module.weight.double()
        torch.testing.assert_close(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked > 10
