"""Every registered method in every dtype a GPU run uses, rehearsed on the CPU (issue 18).

Each cell trains `tiny` for 2 steps, draws a validation grid at every step, samples and scores, all in-process on
a shared random-weight pipeline: fp32; bf16 weights + bf16 autocast (the CUDA default); fp16 weights + fp16
autocast (with loss scaling). A validation grid is drawn in the sampling form, so the grid of the last step is
the run's own first sample, bit for bit.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA_ROOT, compose_config
from PIL import Image

from para.run.registry import METHODS
from para.run.runner import execute

DTYPES = {  # name: (model.weights_dtype, train.mixed_precision)
    "fp32": ("fp32", "no"),
    "bf16": ("bf16", "bf16"),
    "fp16": ("fp16", "fp16"),
}
CELL = [
    "model=tiny",
    "model.resolution=32",
    "logger=none",
    "logger.sample_every=2",
    "logger.sample_prompts=1",
    "steps=2",
    "sample.num_prompts=1",
    "sample.images_per_prompt=1",
    "sample.steps=2",
    "eval.backbones=random",
    "eval.lpips_size=64",
    f"data.root={DATA_ROOT}",
]


@pytest.fixture
def shared_tiny(monkeypatch, tiny_pipe_template):
    """Runs get a copy of the session's tiny pipeline instead of building their own (same weights: seed 0)."""
    from para.core import models

    def build(kind: str, seed: int = 0):
        assert (kind, seed) == ("tiny", 0)
        # tokenizers hold no state a run changes: shared (deep-copying them is half the cost of a copy)
        parts = {
            k: v if k.startswith("tokenizer") else copy.deepcopy(v) for k, v in tiny_pipe_template.components.items()
        }
        return type(tiny_pipe_template)(**parts)

    monkeypatch.setattr(models, "build_random_pipeline", build)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_samples_and_scores_in_every_dtype(shared_tiny, tmp_path, method, dtype):
    weights, autocast = DTYPES[dtype]
    run_dir = tmp_path / "run"
    cfg = compose_config(
        *CELL,
        f"method={method}",
        f"model.weights_dtype={weights}",
        f"train.mixed_precision={autocast}",
        f"run_dir={run_dir}",
    )
    metrics = execute(cfg)
    assert metrics["status"] == "finished", metrics.get("error")
    assert all(np.isfinite(metrics["train_info"]["losses"]))
    assert metrics["scores"]["n_images"] == 1 and np.isfinite(metrics["scores"]["clip_t"])
    final = _pixels(run_dir / "samples" / "p00_i00.png")
    assert final.std() > 1, "a blank image"
    # the grid of the last step is drawn in the sampling form from the same noise: the run's own sample
    assert np.array_equal(_pixels(run_dir / "validation" / "step000002" / "p00_i00.png"), final)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["run_info"]["model"]["weights_dtype"] == weights
