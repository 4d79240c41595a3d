"""One invariant suite for every method in the registry (modelled on peft's test_custom_models.py).

A method added to `para/run/registry.py` gets all of these for free.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import DATA_ROOT, compose_config

from para.core.conditioning import SubjectLatents, encode_prompt
from para.core.data import load_subject_images
from para.core.models import model_id
from para.core.trainer import Trainer, step_generator
from para.layerwise import LayerwiseMethod
from para.run.registry import METHODS

ALL = sorted(METHODS)
PAPER_METHODS = ("para", "lora", "dreambooth")  # the paper's comparison: always in the default suite
# Training-heavy checks of the extra methods run in `make test-all` (svdiff rebuilds W from its SVD each step).
ALL_TRAINING = [n if n in PAPER_METHODS else pytest.param(n, marks=pytest.mark.slow) for n in ALL]
# Learning rates that move a random-weight tiny model visibly in a few steps (the defaults are for SDXL).
FAST_LR = {
    "dreambooth": 1e-4,
    "para": 1e-2,
    "para_authors": 1e-2,
    "loha": 1e-2,
    "lokr": 1e-2,
    "svdiff": 3e-2,
    "lora_attn": 1e-2,
}


def _cfg(method: str, *extra: str):
    lr = FAST_LR.get(method, 1e-3)
    return compose_config(
        "model=tiny", f"method={method}", f"method.lr={lr}", f"data.root={DATA_ROOT}", "run_dir=unused", *extra
    )


def _unet_inputs(pipe, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 8, 8, generator=g)
    cond = encode_prompt(pipe, "a photo of sks dog", 64)
    kwargs = {"text_embeds": cond.pooled.expand(2, -1), "time_ids": cond.time_ids.expand(2, -1)}
    return latents, torch.tensor([10, 500]), cond.prompt_embeds.expand(2, -1, -1), kwargs


def _unet_out(pipe) -> torch.Tensor:
    latents, t, embeds, kwargs = _unet_inputs(pipe)
    with torch.no_grad():
        return pipe.unet(latents, t, encoder_hidden_states=embeds, added_cond_kwargs=kwargs).sample


def _attach(pipe, method_name: str, steps: int, *extra: str):
    cfg = _cfg(method_name, f"steps={steps}", *extra)
    method = METHODS[method_name](cfg.method, model_id(cfg.model))
    params = method.attach(pipe.unet)
    return method, params, Trainer(pipe, method, params, cfg)


def _fit(trainer: Trainer):
    pixels = load_subject_images(DATA_ROOT, "dog", 64)
    latents = SubjectLatents(trainer.pipe, pixels, flip_p=0.5)
    return latents, trainer.train(latents, "a photo of sks dog", 64)


def _train(pipe, method_name: str, steps: int, *extra: str):
    method, params, trainer = _attach(pipe, method_name, steps, *extra)
    latents, result = _fit(trainer)
    return trainer.cfg, method, params, trainer, latents, result


def _canonical(name: str) -> str:
    """A wrapped layer's frozen weight under its original name (PaRa: `.base.`, peft: `.base_layer.`)."""
    return name.replace(".base_layer.", ".").replace(".base.", ".")


@pytest.mark.parametrize("name", ALL)
def test_only_method_parameters_change(tiny_pipe, name):
    frozen_parts = ("vae", "text_encoder", "text_encoder_2")
    frozen_before = {
        (part, k): v.clone() for part in frozen_parts for k, v in getattr(tiny_pipe, part).state_dict().items()
    }
    unet_before = {n: p.detach().clone() for n, p in tiny_pipe.unet.named_parameters()}
    method, params, trainer = _attach(tiny_pipe, name, 3)
    trainable = {id(p): p.detach().clone() for p in params}
    _fit(trainer)
    moved = 0
    for n, p in tiny_pipe.unet.named_parameters():
        if id(p) in trainable:
            moved += not torch.equal(p, trainable[id(p)])
        else:
            assert torch.equal(p, unet_before[_canonical(n)].to(p.dtype)), f"{n} changed but is not a {name} parameter"
    assert moved > 0, f"no {name} parameter moved in 3 steps"
    for (part, key), value in frozen_before.items():
        assert torch.equal(getattr(tiny_pipe, part).state_dict()[key], value), f"{part}.{key} changed"


@pytest.mark.parametrize("name", ALL)
def test_save_load_round_trip_gives_identical_outputs(tiny_pipe, tiny_pipe_template, tmp_path, name):
    _, method, *_ = _train(tiny_pipe, name, 2)
    path = method.save(tiny_pipe.unet, tmp_path / "adapter.safetensors")
    expected = _unet_out(tiny_pipe)
    fresh = copy.deepcopy(tiny_pipe_template)
    reloaded = METHODS[name](method.cfg, method.base_model)
    reloaded.attach(fresh.unet)
    assert not torch.equal(_unet_out(fresh), expected)  # before loading, a fresh adapter differs
    metadata = reloaded.load_file(fresh.unet, path)
    assert metadata["method"] == name
    torch.testing.assert_close(_unet_out(fresh), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_sampling_form_matches_training_form(tiny_pipe, name):
    """prepare_for_sampling(merge=True) then finish_sampling leaves the model as it was."""
    _, method, *_ = _train(tiny_pipe, name, 2)
    before = _unet_out(tiny_pipe)
    method.prepare_for_sampling(tiny_pipe.unet, merge=True)
    method.finish_sampling(tiny_pipe.unet)
    torch.testing.assert_close(_unet_out(tiny_pipe), before, rtol=1e-4, atol=1e-5)


MERGING = sorted(n for n, cls in METHODS.items() if issubclass(cls, LayerwiseMethod))


@pytest.mark.parametrize("name", MERGING)
def test_merged_sampling_runs_the_base_models_own_modules(tiny_pipe, tiny_pipe_template, name):
    """While merged, the UNet has exactly the base model's module types and parameter names (no wrapper call per
    layer), computes (W0 + ΔW) x, and finish_sampling puts the trainable wrappers back."""
    _, method, *_ = _train(tiny_pipe, name, 2)
    adapted = _unet_out(tiny_pipe)
    wrappers = method.layers(tiny_pipe.unet)
    assert method.prepare_for_sampling(tiny_pipe.unet, merge=True)
    base_types = {n: type(m) for n, m in tiny_pipe_template.unet.named_modules()}
    assert {n: type(m) for n, m in tiny_pipe.unet.named_modules()} == base_types
    names = [n for n, _ in tiny_pipe_template.unet.named_parameters()]
    assert [n for n, _ in tiny_pipe.unet.named_parameters()] == names
    torch.testing.assert_close(_unet_out(tiny_pipe), adapted, rtol=1e-4, atol=1e-5)
    assert method.layers(tiny_pipe.unet) == wrappers  # still reachable (saving works while merged)
    method.finish_sampling(tiny_pipe.unet)
    assert all(tiny_pipe.unet.get_submodule(n) is layer for n, layer in wrappers.items())
    assert not any(layer.merged for layer in wrappers.values())
    assert any(p.requires_grad for p in tiny_pipe.unet.parameters())


@pytest.mark.parametrize("name", ALL)
def test_trainable_count_equals_saved_state(tiny_pipe, name):
    cfg = _cfg(name)
    method = METHODS[name](cfg.method, "x")
    params = method.attach(tiny_pipe.unet)
    assert sum(p.numel() for p in params) == sum(v.numel() for v in method.state_dict(tiny_pipe.unet).values())


def test_trainable_counts_match_formulas(tiny_pipe_template):
    """PaRa: Σ d_out·r_eff. LoRA: Σ r·(d_in·k² + d_out). DreamBooth: the whole UNet."""
    from para.bench.param_count import lora_params, para_params
    from para.core.subsets import select_modules

    for name, formula in (("para", lambda m: para_params(m, 16, 0.025)), ("lora", lambda m: lora_params(m, 16))):
        pipe = copy.deepcopy(tiny_pipe_template)
        expected = sum(formula(m) for m in select_modules(pipe.unet, "noxattn").values())
        params = METHODS[name](_cfg(name).method, "x").attach(pipe.unet)
        assert sum(p.numel() for p in params) == expected, name
    pipe = copy.deepcopy(tiny_pipe_template)
    params = METHODS["dreambooth"](_cfg("dreambooth").method, "x").attach(pipe.unet)
    assert sum(p.numel() for p in params) == sum(p.numel() for p in tiny_pipe_template.unet.parameters())


def _denoising_loss(trainer: Trainer, latents: SubjectLatents, pairs: int = 8) -> float:
    """Loss on fixed (photo, noise, timestep) draws: the same for every method and before/after training."""
    cond = encode_prompt(trainer.pipe, "a photo of sks dog", 64)
    total = 0.0
    with torch.no_grad():
        for i in range(pairs):
            g = step_generator(12345, i)
            total += trainer._loss(latents.sample(g, 1), cond, g).item()
    return total / pairs


@pytest.mark.parametrize("name", ALL_TRAINING)
def test_training_lowers_the_denoising_loss(tiny_pipe, name):
    cfg, method, params, trainer, latents, _ = _train(tiny_pipe, name, 1)
    before = _denoising_loss(trainer, latents)
    trainer.cfg.steps = 16
    trainer.train(latents, "a photo of sks dog", 64)
    after = _denoising_loss(trainer, latents)
    assert after < 0.95 * before, f"{name}: loss {before:.4f} -> {after:.4f}"
