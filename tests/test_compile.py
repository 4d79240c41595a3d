"""`train.compile`: a compiled UNet trains the same adapter as eager and samples the same merged model.

The `aot_eager` backend (dynamo tracing + AOT autograd, including PaRa's custom autograd function, ~25 s) and the
inductor backend (C++ code generation, ~1 min on CPU) are in the slow set, which CI runs; the default suite checks
the setting.
"""

from __future__ import annotations

import pytest
import torch
from conftest import DATA_ROOT, compose_config
from test_methods import _unet_out

from para.core.conditioning import SubjectLatents
from para.core.data import load_subject_images
from para.core.trainer import Trainer
from para.run.config import validate
from para.run.registry import METHODS

LR = {"para": 1e-2, "lora": 1e-3}


def _train(pipe, name: str, *extra: str):
    overrides = ["model=tiny", f"method={name}", f"method.lr={LR[name]}", "steps=3", f"data.root={DATA_ROOT}"]
    cfg = compose_config(*overrides, "run_dir=x", *extra)
    validate(cfg)
    torch.manual_seed(0)  # the same initial adapter for the eager and the compiled run
    method = METHODS[name](cfg.method, "x")
    params = method.attach(pipe.unet)
    latents = SubjectLatents(pipe, load_subject_images(DATA_ROOT, "dog", 64), flip_p=0.5)
    result = Trainer(pipe, method, params, cfg).train(latents, "a photo of sks dog", 64)
    return method, result.losses, {k: v.detach().clone() for k, v in method.state_dict(pipe.unet).items()}


def _compare_with_eager(tiny_pipe_template, name: str, backend: str, tol: float) -> None:
    import copy

    eager_pipe, compiled_pipe = copy.deepcopy(tiny_pipe_template), copy.deepcopy(tiny_pipe_template)
    eager, eager_losses, eager_state = _train(eager_pipe, name)
    torch._dynamo.reset()
    method, losses, state = _train(compiled_pipe, name, "train.compile=true", f"train.compile_backend={backend}")
    assert compiled_pipe.unet._compiled_call_impl is not None  # it really ran compiled
    assert losses == pytest.approx(eager_losses, rel=tol, abs=tol)
    assert state.keys() == eager_state.keys()  # nn.Module.compile keeps the parameter names: files stay loadable
    for key in state:
        torch.testing.assert_close(state[key], eager_state[key], rtol=tol, atol=tol)
    unmerged = _unet_out(compiled_pipe)
    torch.testing.assert_close(unmerged, _unet_out(eager_pipe), rtol=tol, atol=tol)
    # The sampling form (PaRa: merged layers swapped in; LoRA: scale 2.2) must reach the compiled graph through
    # dynamo's guards, and finish_sampling must bring the training form back.
    for pipe, m in ((eager_pipe, eager), (compiled_pipe, method)):
        m.prepare_for_sampling(pipe.unet, merge=True)
    sampling_form = _unet_out(compiled_pipe)
    assert not torch.allclose(sampling_form, unmerged) or name == "para"  # LoRA samples at another scale
    torch.testing.assert_close(sampling_form, _unet_out(eager_pipe), rtol=1e-4, atol=1e-5)
    for pipe, m in ((eager_pipe, eager), (compiled_pipe, method)):
        m.finish_sampling(pipe.unet)
    torch.testing.assert_close(_unet_out(compiled_pipe), unmerged, rtol=1e-4, atol=1e-5)


# ~25 s each on 2 cores (dynamo tracing of the training step): the slow set, which CI runs (.ci/run).
@pytest.mark.slow
@pytest.mark.parametrize("name", ["para", "lora"])
def test_compiled_training_equals_eager_aot_eager(tiny_pipe_template, name):
    _compare_with_eager(tiny_pipe_template, name, "aot_eager", 1e-5)


@pytest.mark.slow
def test_compiled_training_equals_eager_inductor(tiny_pipe_template):
    _compare_with_eager(tiny_pipe_template, "para", "inductor", 1e-3)


def test_unknown_compile_backend_is_refused_naming_the_choices():
    cfg = compose_config("model=tiny", "run_dir=x", "train.compile=true", "train.compile_backend=warp-drive")
    with pytest.raises(ValueError, match=r"train.compile_backend='warp-drive'.*inductor"):
        validate(cfg)
