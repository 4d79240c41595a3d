"""Score one run folder: generated samples vs the subject's real photos and the prompts.

The run-folder contract (written by the trainer, which this module never imports):

- `metrics.json`: `run_info` = resolved config with `subject.{name,class_word,kind}` and `data.{root,token}`;
- `samples/prompts.json`: `[{"prompt_index", "prompt", "clean_prompt", "images": ["p00_i00.png", ...]}]`;
- real photos: `<data.root>/<subject.name>/*.jpg|jpeg|png` (`data.root` relative to the working directory).

Real-photo embeddings are cached on disk per (backbone id, pretrained flag, subject, photo contents), so the
30 x 3 cells of Table 1 embed each subject's photos once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from eval import metrics
from eval.backbones import Backbones, load_backbones
from eval.clip_score import ClipScorer, clip_score_of, load_clip_score
from eval.options import BUILTIN_MODES, EvalOptions
from eval.protocols import Protocol, load_protocol
from para.core.data import load_rgb, subject_photos
from para.core.io import atomic_save_safetensors

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("runs/.cache/eval")
SCORE_KEYS = ("dino", "clip_i", "clip_t", "clip_score", "lpips", "ssim")
# Bump when preprocessing changes: old cache files then stop matching. 2: photos read by para.core.data (the
# training reader): transparency over white, 16-bit grayscale scaled, every photo format Pillow knows.
CACHE_VERSION = "2"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err


def load_image(path: Path) -> Image.Image:
    """An image as 8-bit RGB, read exactly as training reads its photos (`para.core.data.load_rgb`)."""
    return load_rgb(path)


def real_photo_paths(data_root: str | Path, subject: str) -> list[Path]:
    """The subject's photos under `data_root`: the very files training uses (`para.core.data.subject_photos`)."""
    return subject_photos(data_root, subject)


def read_samples(run_dir: Path, run_info: dict[str, Any]) -> list[dict[str, Any]]:
    """Validated entries of `samples/prompts.json`, with `paths` added; raises ValueError naming the problem."""
    prompts_file = run_dir / "samples" / "prompts.json"
    if not prompts_file.is_file():
        raise ValueError(f"run folder {run_dir} has no samples ({prompts_file} is missing); sample first")
    entries = read_json(prompts_file)
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{prompts_file}: expected a non-empty list of prompt entries")
    sample_cfg = run_info.get("sample") or {}
    expected = sample_cfg.get("images_per_prompt")
    counts = set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"{prompts_file}: expected objects with prompt_index/prompt/clean_prompt/images")
        for key in ("prompt_index", "prompt", "clean_prompt", "images"):
            if key not in entry:
                raise ValueError(f"{prompts_file}: entry {entry.get('prompt_index', '?')} lacks {key!r}")
        entry["paths"] = [run_dir / "samples" / name for name in entry["images"]]
        missing = [str(p.name) for p in entry["paths"] if not p.is_file()]
        if missing:
            raise ValueError(f"{prompts_file}: prompt {entry['prompt_index']} names missing images {missing}")
        counts.add(len(entry["images"]))
    if len(counts) != 1 or 0 in counts or (expected is not None and counts != {expected}):
        raise ValueError(
            f"{prompts_file}: image count mismatch: prompts have {sorted(counts)} images each, "
            f"expected {expected if expected is not None else 'the same number (> 0) for every prompt'}"
        )
    num_prompts = sample_cfg.get("num_prompts")
    if num_prompts is not None and len(entries) != num_prompts:
        raise ValueError(f"{prompts_file}: {len(entries)} prompts, run_info.sample.num_prompts={num_prompts}")
    return entries


def _files_digest(paths: Sequence[Path], *parts: str) -> str:
    digest = hashlib.sha256("\0".join((CACHE_VERSION, *parts)).encode())
    for path in paths:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cached_embeddings(
    paths: Sequence[Path],
    embed: Callable[[list[Image.Image]], Tensor],
    backbone_id: str,
    pretrained: bool,
    subject: str,
    cache_dir: str | Path | None,
    write_cache: bool = True,
) -> Tensor:
    """Embeddings of the photos at `paths`, computed once and kept under `cache_dir` (None: no cache).

    The file name carries subject, backbone and weights kind; the digest also covers the photos' bytes, so
    edited photos or another backbone never reuse stale numbers. A cache file that is unreadable or does not fit
    (another writer's partial file, a foreign file) is recomputed, never trusted. `write_cache=False` reads the
    cache but adds nothing to it (`python -m eval --dry-run`).
    """
    kind = "pretrained" if pretrained else "random"
    if cache_dir is None:
        return embed([load_image(p) for p in paths])
    digest = _files_digest(paths, backbone_id, kind)[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", backbone_id)[-60:]
    file = Path(cache_dir) / f"{subject}-{slug}-{kind}-{digest}.safetensors"
    cached = _read_cached(file, len(paths))
    if cached is not None:
        return cached
    embeddings = embed([load_image(p) for p in paths]).contiguous()
    if write_cache:
        names = json.dumps([p.name for p in paths])
        meta = {"backbone": backbone_id, "kind": kind, "subject": subject, "photos": names}
        # atomic (unique temp file + rename): parallel cells of one subject write whole files, the last one wins
        atomic_save_safetensors({"embeddings": embeddings}, file, metadata=meta)
    return embeddings


def _read_cached(file: Path, n_photos: int) -> Tensor | None:
    """A cache entry's embeddings if the file is whole and fits (one row per photo); None means recompute."""
    if not file.is_file():
        return None
    try:
        embeddings = load_file(file)["embeddings"]
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        log.warning("ignoring unreadable embedding cache %s (%s); recomputing", file, err)
        return None
    if embeddings.ndim != 2 or embeddings.shape[0] != n_photos or not torch.isfinite(embeddings).all():
        log.warning("ignoring embedding cache %s: shape %s, %d photos; recomputing", file, embeddings.shape, n_photos)
        return None
    return embeddings


def _weighted_mean(values: Sequence[float | None], weights: Sequence[int]) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
    if not pairs:
        return None
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


@dataclass
class _Reference:
    """What generated images are compared with: the subject's photos as embeddings and LPIPS features."""

    dino: Tensor  # (R, 384)
    clip: Tensor  # (R, D)
    lpips: list[Tensor]  # per LPIPS layer, (R, C, h, w)
    n_photos: int


def _score_prompt(
    entry: dict[str, Any], text: Tensor, models: Backbones, scorer: ClipScorer, ref: _Reference, lpips_size: int
) -> tuple[dict[str, Any], Tensor]:
    """All scores of one prompt's images, and their CLIP-score terms; `text`: CLIP embedding of its clean prompt."""
    gen = [load_image(p) for p in entry["paths"]]
    gen_clip = models.clip.embed_images(gen)
    cosine = metrics.paired_cosine(gen_clip, text.expand_as(gen_clip))
    lpips = metrics.lpips_matrix(gen, ref.lpips, models.lpips, lpips_size)  # (G, R)
    terms = scorer.terms(gen, [entry["clean_prompt"]] * len(gen))
    row = {
        "prompt_index": entry["prompt_index"],
        "prompt": entry["prompt"],
        "clean_prompt": entry["clean_prompt"],
        "n_images": len(gen),
        "dino": metrics.mean_cosine(models.dino(gen), ref.dino),
        "clip_i": metrics.mean_cosine(gen_clip, ref.clip),
        "clip_t": cosine.mean().item(),
        "clip_score": clip_score_of(terms),
        "lpips": lpips.mean().item(),
        "ssim": metrics.mean_pairwise_ssim(gen) if len(gen) > 1 else None,
    }
    return row, terms


def score_run(
    run_dir: str | Path,
    eval_cfg: Any = None,
    *,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    backbones: Backbones | None = None,
    write_cache: bool = True,
) -> dict[str, Any]:
    """Score a run folder's samples. Does not write anything into the run folder.

    Args:
        run_dir: folder with `metrics.json` and `samples/prompts.json` (see module docstring).
        eval_cfg: any object or mapping with the `EvalOptions` fields; default: `run_info.eval`, then defaults.
        cache_dir: where real-photo embeddings are cached; None disables the cache.
        backbones: already loaded backbones (their options win over `eval_cfg`).
        write_cache: False reads the embedding cache but writes nothing to disk (a dry run).

    Returns:
        `dino, clip_i, clip_t, clip_score, lpips, ssim` (overall), `per_prompt` (the same per prompt),
        counts, backbone ids, `backbones_pretrained` per backbone and `backbones_pretrained_all`.
        CLIP-T and the CLIP score use `clean_prompt` (identifier removed, DreamBench protocol); the CLIP score is
        torchmetrics' CLIPScore on `eval.clip_score_model` (see `eval.clip_score`). SSIM is the mean
        over prompts of the mean pairwise SSIM among that prompt's images (None with one image per prompt).
    """
    run_dir = Path(run_dir)
    info = read_json(run_dir / "metrics.json")
    run_info = info.get("run_info") if isinstance(info, dict) else None
    if not isinstance(run_info, dict) or "subject" not in run_info or "data" not in run_info:
        raise ValueError(f"{run_dir / 'metrics.json'}: needs run_info with subject and data")
    opts = EvalOptions.from_any(eval_cfg if eval_cfg is not None else run_info.get("eval"))
    entries = read_samples(run_dir, run_info)
    protocol = protocol_named(opts.backbones)
    if protocol is not DREAMBENCH:  # a registered protocol scores its own way (eval.protocols)
        scores = protocol.score_run(run_dir, run_info, entries, opts, cache_dir if write_cache else None)
        return {**scores, "protocol": protocol.name}
    return _score_dreambench(run_dir, run_info, entries, opts, cache_dir, backbones, write_cache)


def _score_dreambench(
    run_dir: Path,
    run_info: dict[str, Any],
    entries: list[dict[str, Any]],
    opts: EvalOptions,
    cache_dir: str | Path | None,
    backbones: Backbones | None,
    write_cache: bool,
) -> dict[str, Any]:
    subject = run_info["subject"]["name"]
    real_paths = real_photo_paths(run_info["data"]["root"], subject)
    models = backbones if backbones is not None else load_backbones(opts)
    scorer = load_clip_score(opts.clip_score_model, opts.pretrained, opts.device)

    dino, clip = models.dino, models.clip
    ref = _Reference(
        dino=cached_embeddings(real_paths, dino, dino.id, dino.pretrained, subject, cache_dir, write_cache),
        clip=cached_embeddings(
            real_paths, clip.embed_images, clip.id, clip.pretrained, subject, cache_dir, write_cache
        ),
        # LPIPS compares pixels: the photos' features, computed once rather than once per prompt
        lpips=metrics.lpips_features(models.lpips, [load_image(p) for p in real_paths], opts.lpips_size),
        n_photos=len(real_paths),
    )
    text_emb = models.clip.embed_texts([e["clean_prompt"] for e in entries])  # (P, D)
    scored = [
        _score_prompt(entry, text, models, scorer, ref, opts.lpips_size)
        for entry, text in zip(entries, text_emb, strict=True)
    ]
    per_prompt = [row for row, _ in scored]

    weights = [p["n_images"] for p in per_prompt]
    scores: dict[str, Any] = {key: _weighted_mean([p[key] for p in per_prompt], weights) for key in SCORE_KEYS}
    # torchmetrics averages 100 * cos over all images, then clamps at 0 (CLIPScore over the whole run).
    scores["clip_score"] = clip_score_of(torch.cat([terms for _, terms in scored]))
    # SSIM is a per-group statistic: every prompt counts once, whatever its image count.
    scores["ssim"] = _weighted_mean([p["ssim"] for p in per_prompt], [1] * len(per_prompt))
    pretrained = {**models.pretrained, "clip_score": scorer.pretrained}
    scores.update(
        {
            "protocol": DREAMBENCH.name,
            "n_prompts": len(per_prompt),
            "n_images": sum(weights),
            "n_real": ref.n_photos,
            "lpips_size": opts.lpips_size,
            "backbones": {
                "dino": models.dino.id,
                "clip": models.clip.id,
                "lpips": models.lpips.id,
                "clip_score": scorer.id,
            },
            "backbones_pretrained": pretrained,
            "backbones_pretrained_all": all(pretrained.values()),
            "per_prompt": per_prompt,
        }
    )
    return scores


def real_reference(
    data_root: str | Path, subject: str, backbones: Backbones, cache_dir: str | Path | None = DEFAULT_CACHE_DIR
) -> dict[str, float]:
    """Real photos scored against each other: leave-one-out DINO / CLIP-I between distinct photos.

    DreamBench's "real images" row (DINO 0.774, CLIP-I 0.885 on its data): an upper reference for fidelity.
    """
    paths = real_photo_paths(data_root, subject)
    if len(paths) < 2:
        raise ValueError(f"{subject}: leave-one-out needs at least 2 photos, found {len(paths)}")
    out = {}
    for key, model, embed in (
        ("dino", backbones.dino, backbones.dino),
        ("clip_i", backbones.clip, backbones.clip.embed_images),
    ):
        emb = cached_embeddings(paths, embed, model.id, model.pretrained, subject, cache_dir)
        cos = metrics.cosine_matrix(emb, emb)
        off_diagonal = ~torch.eye(len(paths), dtype=torch.bool)
        out[key] = cos[off_diagonal].mean().item()
    return out


def _real_reference(data_root: str | Path, subject: str, opts: EvalOptions, cache_dir: str | Path | None):
    return real_reference(data_root, subject, load_backbones(opts), cache_dir)


def _missing(opts: EvalOptions) -> list[str]:
    from eval.backbones import missing_backbones

    return missing_backbones(opts)


DREAMBENCH = Protocol(
    name="dreambench",
    score_keys=SCORE_KEYS,
    labels={
        "dino": "DINO",
        "clip_i": "CLIP-I",
        "clip_t": "CLIP-T",
        "clip_score": "CLIP score",
        "lpips": "LPIPS",
        "ssim": "SSIM",
    },
    fidelity="dino",
    alignment="clip_t",
    reference_keys=("dino", "clip_i"),
    score_run=lambda run_dir, run_info, entries, opts, cache_dir: _score_dreambench(
        run_dir, run_info, entries, opts, cache_dir, None, cache_dir is not None
    ),
    missing=_missing,
    lower_is_better=frozenset({"lpips"}),
    real_reference=_real_reference,
)


def protocol_named(name: str | None) -> Protocol:
    """The protocol of a `scores.protocol` value (None and "dreambench": DreamBench) or an `eval.backbones` mode."""
    return DREAMBENCH if name in (None, "dreambench", *BUILTIN_MODES) else load_protocol(name)
