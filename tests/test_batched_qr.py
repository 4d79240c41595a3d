"""PaRa's QRs batched by B shape (para.batched_qr): the same Q as one QR per layer, the same training, fewer
operators per step; and the method still works in every form (merged, checkpointed, detached)."""

from __future__ import annotations

import copy

import pytest
import torch
from test_methods import _train, _unet_inputs, _unet_out

from para.adapter import PaRa
from para.batched_qr import SharedBases, batched_bases, shape_groups
from para.bench.dispatches import DispatchCount
from para.layers import PaRaLayer


def _unet_step(pipe) -> torch.Tensor:
    latents, t, embeds, kwargs = _unet_inputs(pipe)
    out = pipe.unet(latents, t, encoder_hidden_states=embeds, added_cond_kwargs=kwargs).sample
    out.square().mean().backward()
    return out.detach()


def test_batched_qr_gives_each_layer_its_own_q():
    torch.manual_seed(0)
    layers = [PaRaLayer(torch.nn.Linear(8, m), torch.randn(m, r)) for m, r in [(32, 4), (32, 4), (16, 2), (32, 4)]]
    groups = shape_groups(layers)
    assert [len(g) for g in groups] == [3, 1] and groups[0] == [layers[0], layers[1], layers[3]]
    for group in groups:
        for layer, q in zip(group, batched_bases(group)[1], strict=True):
            torch.testing.assert_close(q, layer.basis(), rtol=0, atol=1e-6)


def test_the_unet_forward_uses_one_qr_per_shape_and_forgets_them(tiny_pipe_template):
    """One `linalg_qr` per B shape instead of one per layer; outputs and gradients as with one QR per layer;
    outside the UNet's forward no layer holds a shared Q (a layer called alone computes its own)."""
    results = {}
    for batch in (True, False):
        pipe = copy.deepcopy(tiny_pipe_template)
        torch.manual_seed(0)
        method = PaRa({"batch_qr": batch}, "tiny")
        params = method.attach(pipe.unet)
        layers = method.layers(pipe.unet)
        with DispatchCount() as count:
            out = _unet_step(pipe)
        groups = len(shape_groups(layers.values()))
        assert count.matching("linalg_qr") == (groups if batch else len(layers)) and groups < len(layers)
        assert all(layer.shared_basis is None for layer in layers.values())
        results[batch] = out, [p.grad for p in params], count.total
    (out, grads, total), (ref_out, ref_grads, ref_total) = results[True], results[False]
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for grad, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-7)
    assert total < ref_total


@pytest.mark.parametrize("extra", [(), ("train.gradient_checkpointing=true",)])
def test_training_with_batched_qr_is_training_with_one_qr_per_layer(tiny_pipe_template, extra):
    runs = {}
    for batch in (True, False):
        pipe = copy.deepcopy(tiny_pipe_template)
        torch.manual_seed(0)
        _, method, _, _, _, result = _train(pipe, "para", 3, f"method.batch_qr={str(batch).lower()}", *extra)
        runs[batch] = result.losses, method.state_dict(pipe.unet)
    (losses, state), (ref_losses, ref_state) = runs[True], runs[False]
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for key in state:
        torch.testing.assert_close(state[key], ref_state[key], rtol=1e-4, atol=1e-6)  # Adam: fp32 rounding


def test_merged_sampling_and_detach_take_the_hooks_along(tiny_pipe, tiny_pipe_template):
    base_out = _unet_out(tiny_pipe)
    _, method, _, _, _, _ = _train(tiny_pipe, "para", 2)
    assert isinstance(method.shared_bases, SharedBases)
    unmerged = _unet_out(tiny_pipe)
    method.prepare_for_sampling(tiny_pipe.unet, merge=True)  # the hook skips merged (parked) layers
    torch.testing.assert_close(_unet_out(tiny_pipe), unmerged, rtol=1e-4, atol=1e-5)
    method.finish_sampling(tiny_pipe.unet)
    method.detach(tiny_pipe.unet)
    assert not tiny_pipe.unet._forward_pre_hooks and not tiny_pipe.unet._forward_hooks
    torch.testing.assert_close(_unet_out(tiny_pipe), base_out, rtol=0, atol=0)
    _, _, _, _, _, result = _train(tiny_pipe, "para", 2)  # a new PaRa on the same UNet: nothing left of the first
    assert len(result.losses) == 2 and len(tiny_pipe.unet._forward_pre_hooks) == 1
