"""Metrics on lists of PIL images and prompts (PAPER.md §6).

DreamBench: DINO and CLIP-I are mean cosines over all generated x real pairs; CLIP-T is the cosine of each
generated image with its own prompt (identifier removed). The PaRa authors' scripts add the torchmetrics CLIP
score (max(100 * mean cos, 0)), LPIPS of generated vs training images, and mean pairwise SSIM within a group.
Functions taking embeddings (`mean_cosine`, `paired_cosine`) let callers reuse cached real-photo embeddings.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from eval.backbones import ClipEmbedder, DinoEmbedder, LpipsScorer


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) cosines between the rows of `a` (N, D) and `b` (M, D), in float64 so means are not rounded."""
    return F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T


def mean_cosine(a: Tensor, b: Tensor) -> float:
    """Mean cosine over all pairs (row of `a`, row of `b`): DreamBench's DINO / CLIP-I aggregation."""
    return cosine_matrix(a, b).mean().item()


def paired_cosine(a: Tensor, b: Tensor) -> Tensor:
    """(N,) cosine of row i of `a` with row i of `b`."""
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (F.normalize(a.double(), dim=-1) * F.normalize(b.double(), dim=-1)).sum(-1)


def clip_score_from_cosine(cosine: Tensor | float) -> float:
    """torchmetrics' CLIP score from image-text cosines: max(100 * mean(cos), 0).

    torchmetrics documents the score per pair as max(100 cos, 0) but computes the mean of 100 cos first and
    clamps once (`clip_score` and `CLIPScore.compute`); we follow the code, so numbers match the library.
    With pretrained CLIP the cosines are positive and both readings agree.
    """
    mean = torch.as_tensor(cosine, dtype=torch.float64).mean().item()
    return max(100.0 * mean, 0.0)


def _check_pairs(images: Sequence[Image.Image], prompts: Sequence[str]) -> None:
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts; one prompt per image is needed")


def dino(gen: Sequence[Image.Image], real: Sequence[Image.Image], model: DinoEmbedder) -> float:
    """Mean DINO ViT-S/16 CLS cosine over all generated x real pairs (subject fidelity)."""
    return mean_cosine(model(gen), model(real))


def clip_i(gen: Sequence[Image.Image], real: Sequence[Image.Image], clip: ClipEmbedder) -> float:
    """Mean CLIP image-image cosine over all generated x real pairs (subject fidelity)."""
    return mean_cosine(clip.embed_images(gen), clip.embed_images(real))


def clip_t(gen: Sequence[Image.Image], prompts: Sequence[str], clip: ClipEmbedder) -> float:
    """Mean CLIP cosine of each image with its prompt (text alignment). `prompts[i]` belongs to `gen[i]`."""
    _check_pairs(gen, prompts)
    return paired_cosine(clip.embed_images(gen), clip.embed_texts(prompts)).mean().item()


def clip_score(gen: Sequence[Image.Image], prompts: Sequence[str], clip: ClipEmbedder) -> float:
    """torchmetrics' CLIP score over the images, max(100 * mean cos, 0); `prompts[i]` belongs to `gen[i]`."""
    _check_pairs(gen, prompts)
    return clip_score_from_cosine(paired_cosine(clip.embed_images(gen), clip.embed_texts(prompts)))


def to_tensor(image: Image.Image, size: int | None = None) -> Tensor:
    """(3, H, W) float32 in [0, 1]; with `size`, centre-cropped to a square and resized to size x size.

    Cropping before resizing keeps the aspect ratio (DreamBooth photos and generated images are compared
    like for like, as the trainer crops photos).
    """
    image = image.convert("RGB")
    if size is not None:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


@torch.inference_mode()
def lpips_features(scorer: LpipsScorer, images: Sequence[Image.Image], size: int) -> list[Tensor]:
    """Unit-normalised trunk activations of LPIPS, per layer; inputs scaled to [-1, 1] as LPIPS expects."""
    import lpips

    x = torch.stack([to_tensor(im, size) for im in images]).to(scorer.device) * 2.0 - 1.0  # (B, 3, S, S)
    outs = scorer.model.net(scorer.model.scaling_layer(x))
    return [lpips.normalize_tensor(o) for o in outs]


@torch.inference_mode()
def _lpips_head(scorer: LpipsScorer, feats0: list[Tensor], feats1: list[Tensor]) -> Tensor:
    """(B,) LPIPS from normalised features: sum over layers of the spatial mean of the linear head."""
    pairs = enumerate(zip(feats0, feats1, strict=True))
    layers = [scorer.model.lins[k]((f0 - f1) ** 2).mean(dim=(2, 3)) for k, (f0, f1) in pairs]  # each (B, 1)
    return torch.stack(layers).sum(0).flatten()


def lpips_matrix(
    gen: Sequence[Image.Image],
    real: Sequence[Image.Image] | list[Tensor],
    scorer: LpipsScorer,
    size: int = 512,
    batch_size: int = 8,
) -> Tensor:
    """(G, R) LPIPS distances, both sides brought to size x size. Features of each image are computed once.

    `real` is a list of images or, to compare the same photos with many groups of generated images without
    recomputing them, their features from `lpips_features(scorer, real, size)`.
    """
    if not gen or not real:
        raise ValueError("lpips needs at least one generated and one real image")
    real_feats = list(real) if isinstance(real[0], Tensor) else lpips_features(scorer, real, size)
    rows = []
    for start in range(0, len(gen), batch_size):
        feats = lpips_features(scorer, gen[start : start + batch_size], size)
        batch = len(feats[0])
        cols = [
            _lpips_head(scorer, feats, [f[r : r + 1].expand(batch, *f.shape[1:]) for f in real_feats])
            for r in range(len(real_feats[0]))
        ]
        rows.append(torch.stack(cols, dim=1).double().cpu())  # (B, R)
    return torch.cat(rows)


def lpips_to_refs(
    gen: Sequence[Image.Image], real: Sequence[Image.Image], scorer: LpipsScorer, size: int = 512
) -> float:
    """Mean LPIPS over all generated x training-image pairs (lower = closer to the training photos)."""
    return lpips_matrix(gen, real, scorer, size).mean().item()


def mean_pairwise_ssim(images: Sequence[Image.Image], size: int | None = None, batch_size: int = 8) -> float:
    """Average SSIM over all unordered pairs of `images` (torchmetrics, Gaussian 11x11, data range 1).

    The PaRa authors use it as a consistency / diversity measure over a group of samples. Images must share
    one size unless `size` is given; a group needs at least two images.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    if len(images) < 2:
        raise ValueError(f"pairwise SSIM needs at least 2 images, got {len(images)}")
    tensors = [to_tensor(im, size) for im in images]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"images differ in size {sorted(shapes)}; pass size= to compare them at a common size")
    stack = torch.stack(tensors)  # (N, 3, H, W)
    pairs = list(itertools.combinations(range(len(images)), 2))
    values = []
    for start in range(0, len(pairs), batch_size):
        i, j = zip(*pairs[start : start + batch_size], strict=True)
        values.append(ssim(stack[list(i)], stack[list(j)], data_range=1.0, reduction="none").double())
    return torch.cat(values).mean().item()
