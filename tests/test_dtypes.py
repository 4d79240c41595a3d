"""Every registered method in every dtype a GPU run uses, rehearsed on the CPU (issue 18).

Each cell trains `tiny` for 2 steps, draws a validation grid, samples and scores, in-process on a shared
random-weight pipeline: fp32; bf16 weights + bf16 autocast (the CUDA default); fp16 weights + fp16 autocast
(with loss scaling). Grids are drawn in the sampling form, so the grid of the last step is the run's own first
sample, bit for bit; and drawing them never changes what is trained.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import FAST, compose_config
from PIL import Image
from safetensors.torch import load_file

from baselines.svdiff import SVDiffLayer
from para.layers import PaRaLayer
from para.run.registry import METHODS
from para.run.runner import execute

DTYPES = {  # name: (model.weights_dtype, train.mixed_precision)
    "fp32": ("fp32", "no"),
    "bf16": ("bf16", "bf16"),
    "fp16": ("fp16", "fp16"),
}


def _run(tmp_path, name: str, method: str, dtype: str, *extra: str) -> tuple:
    weights, autocast = DTYPES[dtype]
    run_dir = tmp_path / name
    overrides = [f"method={method}", f"model.weights_dtype={weights}", f"train.mixed_precision={autocast}"]
    metrics = execute(compose_config(*FAST, *overrides, f"run_dir={run_dir}", *extra))
    return metrics, run_dir


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


# The default suite: every method in bf16 (the CUDA default) and PaRa in every dtype; the other cells (~1.5 s each)
# are in the slow set, which CI runs.
CELLS = [
    pytest.param(method, dtype, marks=() if dtype == "bf16" or method == "para" else pytest.mark.slow)
    for method in sorted(METHODS)
    for dtype in DTYPES
]


@pytest.mark.parametrize(("method", "dtype"), CELLS)
def test_every_method_trains_samples_and_scores_in_every_dtype(shared_tiny, tmp_path, method, dtype):
    metrics, run_dir = _run(tmp_path, "run", method, dtype, "logger.sample_every=2", "logger.sample_prompts=1")
    assert metrics["status"] == "finished", metrics.get("error")
    assert all(np.isfinite(metrics["train_info"]["losses"]))
    assert metrics["scores"]["n_images"] == 1 and np.isfinite(metrics["scores"]["clip_t"])
    final = _pixels(run_dir / "samples" / "p00_i00.png")
    assert final.std() > 1, "a blank image"
    # the grid of the last step: the sampling form (LoRA at its scale, PaRa merged, ...) from the same noise
    assert np.array_equal(_pixels(run_dir / "validation" / "step000002" / "p00_i00.png"), final)
    saved = json.loads((run_dir / "metrics.json").read_text())["run_info"]
    assert (saved["model"]["weights_dtype"], saved["train"]["mixed_precision"]) == DTYPES[dtype]


@pytest.mark.parametrize("method", ["para", "dreambooth"])
def test_validation_grids_do_not_change_what_is_trained(shared_tiny, tmp_path, method):
    """bf16: a grid at every step (PaRa merges and unmerges, DreamBooth casts its fp32 master down and back)
    leaves the trained weights bit-identical to a run without grids."""
    common = ("sample.enabled=false", "eval.enabled=false", "steps=3")
    _run(tmp_path, "plain", method, "bf16", *common)
    _run(tmp_path, "grids", method, "bf16", *common, "logger.sample_every=1", "logger.sample_prompts=1")
    assert len(list((tmp_path / "grids" / "validation").glob("step*/p00_i00.png"))) == 3
    plain, grids = (load_file(tmp_path / name / "adapter.safetensors") for name in ("plain", "grids"))
    assert plain.keys() == grids.keys()
    assert all(torch.equal(plain[k], grids[k]) for k in plain)


@pytest.mark.parametrize("layer_type", [PaRaLayer, SVDiffLayer])
def test_merge_then_unmerge_gives_back_the_bf16_weight_exactly(layer_type):
    torch.manual_seed(0)
    base = torch.nn.Linear(64, 48).to(torch.bfloat16)
    w0 = base.weight.detach().clone()
    if layer_type is PaRaLayer:
        layer = PaRaLayer(base, torch.randn(48, 4) * 0.02)
    else:
        layer = SVDiffLayer(base)
        torch.nn.init.normal_(layer.svdiff_delta, std=0.1)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    adapted = layer(x)
    for _ in range(3):  # three validation grids
        layer.merge()
        assert not torch.equal(base.weight, w0)
        torch.testing.assert_close(layer(x), adapted, rtol=0.05, atol=0.05)  # merged: the same map, bf16-rounded
        layer.unmerge()
    assert torch.equal(base.weight, w0)
