"""Metrics: known answers, agreement with torchmetrics and with an explicit numpy computation."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.functional.image import structural_similarity_index_measure
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from eval import metrics
from eval.backbones import load_backbones
from eval.options import EvalOptions

DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "dreambooth" / "dataset"
PROMPTS = ["a dog in the jungle", "a dog on the beach", "a red cube"]


@pytest.fixture(scope="module")
def models():
    return load_backbones(EvalOptions(backbones="random"))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    paths = [DATA_ROOT / "dog" / "00.jpg", DATA_ROOT / "dog" / "01.jpg", DATA_ROOT / "cat" / "00.jpg"]
    return [Image.open(p).convert("RGB").resize((96, 96)) for p in paths]


def test_an_image_against_itself_scores_one(models, images):
    assert metrics.dino(images[:1], images[:1], models.dino) == pytest.approx(1.0, abs=1e-6)
    assert metrics.clip_i(images[:1], images[:1], models.clip) == pytest.approx(1.0, abs=1e-6)


def test_fidelity_is_the_mean_over_all_generated_x_real_pairs(images):
    """Aggregation only: a fake embedder maps each image to a fixed vector, so no network is run."""
    vectors = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    table = {id(im): v for im, v in zip(images, vectors, strict=True)}

    def embed(batch):
        return torch.stack([table[id(im)] for im in batch])

    gen, real = images[:2], images[1:]
    expected = np.mean([
        float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
        for a, b in itertools.product(embed(gen).double().numpy(), embed(real).double().numpy())
    ])  # fmt: skip
    assert metrics.dino(gen, real, embed) == pytest.approx(expected, abs=1e-9)
    assert metrics.dino(gen, gen, embed) < 1.0  # distinct images are not their own neighbours


def _memoized(clip):
    """The same embedder, computing each distinct input batch once: the four routes below share two passes."""
    import dataclasses
    import hashlib

    def memo(fn):
        cache = {}

        def wrapped(*args, **kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            key = (tuple(x.shape), hashlib.sha1(x.cpu().numpy().tobytes()).hexdigest())
            if key not in cache:
                cache[key] = fn(x)
            return cache[key]

        return wrapped

    return dataclasses.replace(clip, encode_image=memo(clip.encode_image), encode_text=memo(clip.encode_text))


def test_clip_t_and_clip_score_match_torchmetrics_on_the_same_backbone(models, images):
    """torchmetrics' own CLIP-score code, fed our open_clip backbone through its model/processor interface (its
    stock loader is tied to transformers CLIP): per-sample 100 * cos from `_clip_score_update`, and the public
    `clip_score` (mean first, then clamp at 0)."""
    from torchmetrics.functional.multimodal import clip_score as tm_clip_score
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update

    clip, gen, prompts = _memoized(models.clip), images[1:], PROMPTS[1:]
    with pytest.raises(ValueError, match="one prompt per image"):
        metrics.clip_t(images, PROMPTS[:2], clip)

    def processor(images=None, text=None, **_):
        if images is not None:
            return {"pixel_values": torch.stack([clip.preprocess(to_pil_image(im)) for im in images])}
        ids = clip.tokenize(list(text))["text"]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    model = SimpleNamespace(
        config=SimpleNamespace(),
        to=lambda device: model,
        get_image_features=lambda pixel_values: clip.encode_image(pixel_values),
        get_text_features=lambda input_ids, attention_mask: clip.encode_text(input_ids),
    )
    tensors = [pil_to_tensor(im) for im in gen]  # (3, H, W) uint8, as torchmetrics expects
    with torch.no_grad():
        per_sample, _ = _clip_score_update(tensors, prompts, model, processor)  # 100 * cos, unclamped
        expected = tm_clip_score(tensors, prompts, model_name_or_path=lambda: (model, processor))
    clip_t = metrics.clip_t(gen, prompts, clip)
    assert 100 * clip_t == pytest.approx(per_sample.mean().item(), abs=1e-3)
    assert metrics.clip_score(gen, prompts, clip) == pytest.approx(expected.item(), abs=1e-3)


def test_clip_score_clamps_the_mean_at_zero():
    assert metrics.clip_score_from_cosine(torch.tensor([0.3, 0.1])) == pytest.approx(20.0)
    assert metrics.clip_score_from_cosine(torch.tensor([0.2, -0.4])) == 0.0  # mean first, then clamp
    assert metrics.clip_score_from_cosine(-0.1) == 0.0


def test_pairwise_ssim_matches_torchmetrics(images):
    tensors = [metrics.to_tensor(im) for im in images]
    expected = np.mean([
        structural_similarity_index_measure(a[None], b[None], data_range=1.0).item()
        for a, b in itertools.combinations(tensors, 2)
    ])  # fmt: skip
    assert metrics.mean_pairwise_ssim(images, batch_size=2) == pytest.approx(expected, abs=1e-6)
    assert metrics.mean_pairwise_ssim([images[0], images[0].copy()]) == pytest.approx(1.0, abs=1e-6)


def test_pairwise_ssim_refuses_what_it_cannot_compare(images):
    with pytest.raises(ValueError, match="at least 2"):
        metrics.mean_pairwise_ssim(images[:1])
    mixed = [images[0], images[1].resize((64, 64))]
    with pytest.raises(ValueError, match="differ in size"):
        metrics.mean_pairwise_ssim(mixed)
    assert 0.0 < metrics.mean_pairwise_ssim(mixed, size=64) < 1.0


def test_to_tensor_crops_to_a_square_before_resizing():
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 100, 100))  # a blue left third is cropped away
    t = metrics.to_tensor(wide, 32)
    assert t.shape == (3, 32, 32) and t.min() >= 0 and t.max() <= 1
    assert t[0].mean() == pytest.approx(1.0) and t[2].mean() == pytest.approx(0.0)


def test_lpips_of_identical_images_is_zero(models, images):
    assert metrics.lpips_to_refs(images[:1], images[:1], models.lpips, size=64) == pytest.approx(0.0, abs=1e-6)
    assert metrics.lpips_to_refs(images[:1], images[2:], models.lpips, size=64) > 0.05
