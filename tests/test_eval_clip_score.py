"""clip_score (issue 18, item 12): torchmetrics' CLIPScore with its default model, ViT-L/14, through transformers."""

from __future__ import annotations

import pytest
import torch
from conftest import DATA_ROOT
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from eval.clip_score import DEFAULT_MODEL, _random_clip, clip_score_of, load_clip_score
from eval.embedders import as_embedding
from eval.hub import BackboneUnavailable
from eval.options import EvalOptions
from para.run.config import EvalConfig

SMALL = "openai/clip-vit-base-patch32"
TEXTS = ["a dog", "a dog on a beach", "a cat in the snow"]


@pytest.fixture(scope="module")
def photos():
    return [Image.open(DATA_ROOT / "dog" / f"0{i}.jpg").convert("RGB").resize((96, 96)) for i in range(3)]


@pytest.mark.slow  # make bench's tooling: CI's slow set runs it
def test_the_default_is_torchmetrics_default_model_and_architecture():
    """torchmetrics' CLIPScore defaults to openai/clip-vit-large-patch14; the random fallback has its architecture
    (parameter count checked against open_clip's ViT-L-14, built on the meta device: no weights, no time)."""
    import inspect

    import open_clip
    from torchmetrics.multimodal.clip_score import CLIPScore

    assert inspect.signature(CLIPScore.__init__).parameters["model_name_or_path"].default == DEFAULT_MODEL
    assert EvalOptions().clip_score_model == EvalConfig().clip_score_model == DEFAULT_MODEL
    for ours, theirs in ((DEFAULT_MODEL, "ViT-L-14"), (SMALL, "ViT-B-32")):
        with torch.device("meta"):
            model, _ = _random_clip(ours)
        reference = open_clip.create_model(theirs, pretrained=None, device="meta")
        assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())


def test_terms_are_torchmetrics_clip_score(photos):
    """Per image: torchmetrics' functional clip_score (max(100 cos, 0) for one pair); per group: CLIPScore
    updated with the whole group (mean first, then clamp)."""
    from torchmetrics.functional.multimodal import clip_score
    from torchmetrics.multimodal.clip_score import CLIPScore

    scorer = load_clip_score(SMALL, False, "auto")  # the runs' cached model (conftest.SMALL_CLIP_SCORE)
    assert not scorer.pretrained and scorer.id == f"clip_score:{SMALL}"
    terms = scorer.terms(photos, TEXTS)
    factory = lambda: (scorer.model, scorer.processor)  # noqa: E731
    for image, text, term in zip(photos, TEXTS, terms, strict=True):
        assert clip_score(pil_to_tensor(image), text, model_name_or_path=factory).item() == pytest.approx(
            max(term.item(), 0.0), abs=1e-4
        )
    group = CLIPScore(model_name_or_path=factory)
    group.update([pil_to_tensor(image) for image in photos], TEXTS)
    assert clip_score_of(terms) == pytest.approx(group.compute().item(), abs=1e-4)


def test_a_local_transformers_folder_is_pretrained_and_computes_100_cos(tmp_path, photos):
    """Oracle: the folder's own CLIPModel and processor, cosine by hand."""
    from transformers import CLIPConfig, CLIPModel

    model, processor = _random_clip(SMALL)
    small = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           patch_size=32, image_size=224),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(3)
    CLIPModel(small).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    scorer = load_clip_score(str(tmp_path), True, "cpu")
    assert scorer.pretrained
    reference = CLIPModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        pixels = processor(images=photos, return_tensors="pt")["pixel_values"]
        tokens = processor(text=TEXTS, return_tensors="pt", padding=True)
        image = as_embedding(reference.get_image_features(pixel_values=pixels))
        text = as_embedding(reference.get_text_features(**tokens))
    expected = 100 * torch.nn.functional.cosine_similarity(image, text)
    torch.testing.assert_close(scorer.terms(photos, TEXTS).float(), expected, rtol=0, atol=1e-3)


def test_missing_weights_offline_name_the_setting(tmp_path):
    with pytest.raises(BackboneUnavailable, match="eval.clip_score_model"):
        load_clip_score("para-test/no-such-clip", True, "cpu")
    with pytest.raises(ValueError, match="config.json or one of"):
        load_clip_score("para-test/unknown-architecture", False, "cpu")
