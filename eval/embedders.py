"""Embedding functions behind one small interface, whatever library or version computes them.

`as_embedding` is the single adapter for library API differences (open_clip and transformers<5 return
tensors, transformers 5 returns output objects); the embedders batch their inputs and return float32 CPU
tensors, so metrics never see model objects.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Tuple outputs (return_dict=False) keep ModelOutput field order: (last_hidden_state, pooler_output, ...).
_TUPLE_INDEX = {"last_hidden_state": 0, "pooler_output": 1}


def as_embedding(output: Any, field: str = "pooler_output") -> Tensor:
    """The tensor a model call means, whatever the library version returns.

    open_clip's `encode_image` and transformers<5's `get_image_features` return a tensor; transformers 5
    returns a `BaseModelOutputWithPooling` whose `pooler_output` holds the projected embedding; with
    `return_dict=False` it is a tuple. This is the one place that absorbs those differences.
    """
    if isinstance(output, Tensor):
        return output
    value = getattr(output, field, None)
    if value is None and isinstance(output, Mapping):
        value = output.get(field)
    if value is None and isinstance(output, tuple) and len(output) > _TUPLE_INDEX.get(field, 0):
        value = output[_TUPLE_INDEX.get(field, 0)]
    if not isinstance(value, Tensor):
        raise TypeError(f"cannot read an embedding ({field!r}) from a {type(output).__name__}")
    return value


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@functools.cache
def dino_transform() -> Callable[[Image.Image], Tensor]:
    """DINO's evaluation transform: short side to 256 (bicubic), centre crop 224, ImageNet normalisation."""
    from torchvision import transforms as T

    resize = T.Resize(256, interpolation=T.InterpolationMode.BICUBIC)
    return T.Compose([resize, T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


@torch.inference_mode()
def _embed_batched(items: Sequence[Any], batch_size: int, encode: Callable[[Sequence[Any]], Tensor]) -> Tensor:
    """(N, D) float32 CPU embeddings, computed `batch_size` items at a time."""
    if not items:
        raise ValueError("nothing to embed: empty list")
    chunks = [encode(items[i : i + batch_size]).float().cpu() for i in range(0, len(items), batch_size)]
    return torch.cat(chunks)


@dataclass
class DinoEmbedder:
    """DINO ViT-S/16: CLS token of the last hidden state (DreamBooth paper's DINO metric)."""

    model: nn.Module
    name: str
    pretrained: bool
    device: torch.device
    batch_size: int = 16

    @property
    def id(self) -> str:
        return f"dino:{self.name}"

    def __call__(self, images: Sequence[Image.Image]) -> Tensor:
        """(N, 384) embeddings, not normalised."""
        preprocess = dino_transform()

        def encode(batch: Sequence[Image.Image]) -> Tensor:
            pixels = torch.stack([preprocess(_rgb(im)) for im in batch]).to(self.device)  # (B, 3, 224, 224)
            return as_embedding(self.model(pixel_values=pixels), "last_hidden_state")[:, 0]  # CLS, (B, 384)

        return _embed_batched(images, self.batch_size, encode)


@dataclass
class ClipEmbedder:
    """CLIP image and text embeddings behind one interface (open_clip or a transformers CLIP folder)."""

    encode_image: Callable[[Tensor], Any]
    encode_text: Callable[..., Any]
    preprocess: Callable[[Image.Image], Tensor]
    tokenize: Callable[[list[str]], dict[str, Tensor]]
    name: str
    pretrained: bool
    device: torch.device
    batch_size: int = 16

    @property
    def id(self) -> str:
        return f"clip:{self.name}"

    def embed_images(self, images: Sequence[Image.Image]) -> Tensor:
        """(N, D) image embeddings, not normalised."""

        def encode(batch: Sequence[Image.Image]) -> Tensor:
            pixels = torch.stack([self.preprocess(_rgb(im)) for im in batch]).to(self.device)
            return as_embedding(self.encode_image(pixels))

        return _embed_batched(images, self.batch_size, encode)

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """(N, D) text embeddings, not normalised."""

        def encode(batch: Sequence[str]) -> Tensor:
            tokens = {k: v.to(self.device) for k, v in self.tokenize(list(batch)).items()}
            return as_embedding(self.encode_text(**tokens))

        return _embed_batched(texts, self.batch_size, encode)


@dataclass
class LpipsScorer:
    """An `lpips.LPIPS` model plus where its weights came from."""

    model: nn.Module
    net: str
    pretrained: bool
    device: torch.device

    @property
    def id(self) -> str:
        return f"lpips:{self.net}"


@dataclass
class Backbones:
    dino: DinoEmbedder
    clip: ClipEmbedder
    lpips: LpipsScorer

    @property
    def pretrained(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name).pretrained for f in fields(self)}
