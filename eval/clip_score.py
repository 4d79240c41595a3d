"""The CLIP score of the PaRa authors' scripts: torchmetrics' `CLIPScore` with its default model (issue 18).

torchmetrics scores max(100 · mean cos(image, text), 0) with `openai/clip-vit-large-patch14` unless told
otherwise, and the authors' scripts call it with its defaults; DreamBench's CLIP-T (`clip_t`) uses CLIP ViT-B/32.
So `clip_score` is not 100 × `clip_t`: it is torchmetrics' own computation (its processor, its features, its
100·cos) with `eval.clip_score_model`, loaded through transformers from the local hub cache (`make weights`
fetches it) or a local folder. `eval.backbones=random` builds the same architecture from its config with seeded
random weights, flagged like every random backbone.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from eval.backbones import seeded
from eval.embedders import as_embedding, resolve_device
from eval.hub import offline_reason, unavailable

DEFAULT_MODEL = "openai/clip-vit-large-patch14"  # torchmetrics' CLIPScore default
CLIP_SCORE_SEED = 2
# The OpenAI CLIPs torchmetrics names, for random weights offline: vision (width, layers, heads, patch, image
# size), text (width, layers, heads), projection width.
OPENAI_CLIP = {
    "openai/clip-vit-large-patch14": ((1024, 24, 16, 14, 224), (768, 12, 12), 768),
    "openai/clip-vit-large-patch14-336": ((1024, 24, 16, 14, 336), (768, 12, 12), 768),
    "openai/clip-vit-base-patch16": ((768, 12, 12, 16, 224), (512, 12, 8), 512),
    "openai/clip-vit-base-patch32": ((768, 12, 12, 32, 224), (512, 12, 8), 512),
}


class TensorFeatures(nn.Module):
    """A transformers `CLIPModel` as torchmetrics calls it: feature methods that return tensors (transformers 5
    returns output objects, on which torchmetrics' `features.norm(...)` fails)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self) -> Any:  # torchmetrics reads text_config.max_position_embeddings
        return self.model.config

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        return as_embedding(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return as_embedding(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


@dataclass
class ClipScorer:
    """torchmetrics' CLIPScore on one model; `terms` gives each image's 100·cos, from which any group's score is
    max(mean, 0), exactly as CLIPScore over that group computes it."""

    model: TensorFeatures
    processor: Any
    name: str
    pretrained: bool
    device: torch.device

    @property
    def id(self) -> str:
        return f"clip_score:{self.name}"

    def terms(self, images: Sequence[Image.Image], texts: Sequence[str]) -> Tensor:
        """(N,) float64: 100·cos(image i, text i), CLIPScore's accumulated `score` for that pair, unclamped."""
        from torchmetrics.multimodal.clip_score import CLIPScore
        from torchvision.transforms.functional import pil_to_tensor

        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} prompts; one prompt per image is needed")
        out = []
        for image, text in zip(images, texts, strict=True):
            metric = CLIPScore(model_name_or_path=lambda: (self.model, self.processor)).to(self.device)
            metric.update(pil_to_tensor(image.convert("RGB")).to(self.device), text)
            out.append(metric.score.detach().double().cpu())
        return torch.stack(out)


def clip_config(name: str) -> Any:
    """The `CLIPConfig` of `name`: a folder's config.json, or a known OpenAI CLIP's architecture (offline)."""
    from transformers import CLIPConfig

    folder = Path(name).expanduser()
    if (folder / "config.json").is_file():
        return CLIPConfig.from_pretrained(folder)
    if name not in OPENAI_CLIP:
        raise ValueError(
            f"eval.clip_score_model={name!r}: random weights need its architecture; expected a folder with a "
            f"config.json or one of {sorted(OPENAI_CLIP)}"
        )
    (v_width, v_layers, v_heads, patch, size), (t_width, t_layers, t_heads), proj = OPENAI_CLIP[name]
    return CLIPConfig(
        text_config=dict(
            hidden_size=t_width, intermediate_size=4 * t_width, num_hidden_layers=t_layers,
            num_attention_heads=t_heads, projection_dim=proj,
        ),
        vision_config=dict(
            hidden_size=v_width, intermediate_size=4 * v_width, num_hidden_layers=v_layers,
            num_attention_heads=v_heads, patch_size=patch, image_size=size, projection_dim=proj,
        ),
        projection_dim=proj,
    )  # fmt: skip


def _random_clip(name: str) -> tuple[nn.Module, Any]:
    """CLIPModel with seeded random weights in the architecture of `name` (a known OpenAI CLIP or a folder's
    config.json), and the matching processor built offline (OpenAI's image statistics, the CLIP BPE tokenizer)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    from para.core.models import clip_tokenizer

    config = clip_config(name)
    with seeded(CLIP_SCORE_SEED):
        model = CLIPModel(config)
    size = config.vision_config.image_size
    images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return model, CLIPProcessor(image_processor=images, tokenizer=clip_tokenizer())


def _pretrained_clip(name: str) -> tuple[nn.Module, Any]:
    """CLIPModel and CLIPProcessor from a local folder, the local hub cache, or (when the hub answers) a download."""
    from transformers import CLIPModel, CLIPProcessor

    folder = Path(name).expanduser()
    source = folder if folder.exists() else name

    def load(local_only: bool) -> tuple[nn.Module, Any]:
        model = CLIPModel.from_pretrained(source, local_files_only=local_only)
        return model, CLIPProcessor.from_pretrained(source, local_files_only=local_only)

    try:
        return load(local_only=True)
    except (OSError, ValueError) as err:
        tried = [f"{'local folder' if folder.exists() else 'Hugging Face cache for'} {name!r} ({type(err).__name__})"]
        reason = str(err).splitlines()[0] if folder.exists() else offline_reason()
    if reason is not None:
        raise unavailable("CLIP-score", tried, "eval.clip_score_model", reason)
    try:
        return load(local_only=False)
    except (OSError, ValueError) as err:
        raise unavailable("CLIP-score", [*tried, f"download of {name!r}"], "eval.clip_score_model", str(err)) from err


@functools.lru_cache(maxsize=2)
def load_clip_score(name: str, pretrained: bool, device: str = "auto") -> ClipScorer:
    """The CLIP-score model `name` (hub id or folder), pretrained or seeded random, loaded once per process."""
    model, processor = _pretrained_clip(name) if pretrained else _random_clip(name)
    where = resolve_device(device)
    model = TensorFeatures(model.float().eval().requires_grad_(False)).to(where)
    return ClipScorer(model, processor, name, pretrained, where)


def clip_score_of(terms: Tensor) -> float:
    """CLIPScore over the images whose `terms` are given: max(mean 100·cos, 0)."""
    return max(terms.double().mean().item(), 0.0)
