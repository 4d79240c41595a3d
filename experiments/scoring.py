"""Per-image scores for the experiments, on the `eval` package's backbones and metrics.

Every generated image gets one row: CLIP-T against its clean prompt, its CLIP-score term (torchmetrics' 100·cos
on `eval.clip_score_model`; a group's CLIP score is max(mean, 0)), and DINO / CLIP-I against the photos of
each subject it should show (mean cosine over that subject's photos, so the mean over images is DreamBench's
mean over all generated × real pairs). With two subjects, both columns are there, so an image that shows one
subject only has a high score for one and a low score for the other: `dino_min` / `clip_i_min` show it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from torch import Tensor

from eval import metrics
from eval.backbones import load_backbones
from eval.clip_score import load_clip_score
from eval.options import EvalOptions
from eval.score import DEFAULT_CACHE_DIR, cached_embeddings, load_image, real_photo_paths
from para.core.sampling import read_prompts


class Scorer:
    """The evaluation backbones of `eval_cfg` (pretrained or random) and cached subject-photo embeddings."""

    def __init__(self, eval_cfg: Any, data_root: str | Path, cache_dir: str | Path | None = DEFAULT_CACHE_DIR):
        self.opts = EvalOptions.from_any(eval_cfg)
        self.models = load_backbones(self.opts)
        self.clip_score = load_clip_score(self.opts.clip_score_model, self.opts.pretrained, self.opts.device)
        self.data_root = Path(data_root)
        self.cache_dir = cache_dir
        self._refs: dict[str, tuple[Tensor, Tensor]] = {}

    @property
    def pretrained(self) -> bool:
        """True only when every backbone has real weights: otherwise no number is comparable with a paper."""
        return all(self.models.pretrained.values()) and self.clip_score.pretrained

    def subject_refs(self, subject: str) -> tuple[Tensor, Tensor]:
        """(DINO, CLIP) embeddings of the subject's real photos, cached on disk by `eval.score`."""
        if subject not in self._refs:
            paths = real_photo_paths(self.data_root, subject)
            m = self.models
            dino = cached_embeddings(paths, m.dino, m.dino.id, m.dino.pretrained, subject, self.cache_dir)
            clip = cached_embeddings(paths, m.clip.embed_images, m.clip.id, m.clip.pretrained, subject, self.cache_dir)
            self._refs[subject] = (dino, clip)
        return self._refs[subject]

    def score_images(
        self,
        images: Sequence[Image.Image],
        prompts: Sequence[str],
        clean_prompts: Sequence[str],
        subjects: Sequence[str],
        tokens: Sequence[str] = (),
    ) -> pd.DataFrame:
        """One row per image: clip_t, clip_score (the image's 100·cos term), and dino_<s> / clip_i_<s> per subject
        (+ _min when several). DreamBench scores the clean prompts: `prompts` and `tokens` are not read."""
        gen_dino = self.models.dino(images)
        gen_clip = self.models.clip.embed_images(images)
        text = self.models.clip.embed_texts(list(clean_prompts))
        cols: dict[str, Any] = {
            "clip_t": metrics.paired_cosine(gen_clip, text).tolist(),
            "clip_score": self.clip_score.terms(images, clean_prompts).tolist(),
        }
        for subject in subjects:
            ref_dino, ref_clip = self.subject_refs(subject)
            cols[f"dino_{subject}"] = metrics.cosine_matrix(gen_dino, ref_dino).mean(1).tolist()
            cols[f"clip_i_{subject}"] = metrics.cosine_matrix(gen_clip, ref_clip).mean(1).tolist()
        frame = pd.DataFrame(cols)
        if len(subjects) > 1:
            for key in ("dino", "clip_i"):
                frame[f"{key}_min"] = frame[[f"{key}_{s}" for s in subjects]].min(axis=1)
        return frame

    def lpips_to(self, images: Sequence[Image.Image], refs: Sequence[Image.Image]) -> list[float]:
        """Per image, the mean LPIPS to `refs` (lower = closer)."""
        return metrics.lpips_matrix(images, refs, self.models.lpips, self.opts.lpips_size).mean(1).tolist()


def make_scorer(eval_cfg: Any, data_root: str | Path) -> Any:
    """The per-image scorer of `eval.backbones`' protocol: DreamBench's backbones (`Scorer`), or the one a
    registered protocol provides (eval.protocols.Protocol.image_scorer, e.g. the world's exact evaluators)."""
    from eval.score import DREAMBENCH, protocol_named

    opts = EvalOptions.from_any(eval_cfg)
    protocol = protocol_named(opts.backbones)
    if protocol is DREAMBENCH:
        return Scorer(eval_cfg, data_root)
    if protocol.image_scorer is None:
        raise ValueError(
            f"eval.backbones={opts.backbones}: the {protocol.name} protocol scores whole runs only, and the "
            "experiments score every image; use eval.backbones=pretrained (or random for a plumbing check)"
        )
    return protocol.image_scorer(opts, data_root)


def score_folder(
    scorer: Any, folder: Path, subjects: Sequence[str], tokens: Sequence[str] = (), **labels: Any
) -> pd.DataFrame:
    """Per-image scores of a samples folder, with `labels` (e.g. condition=...) as leading columns. `tokens`:
    the identifier of each subject, as the prompts name them."""
    rows = []
    for entry in read_prompts(folder):
        images = [load_image(folder / name) for name in entry["images"]]
        n = len(images)
        frame = scorer.score_images(images, [entry["prompt"]] * n, [entry["clean_prompt"]] * n, subjects, tokens)
        frame.insert(0, "image", entry["images"])
        frame.insert(0, "prompt", entry["clean_prompt"])
        frame.insert(0, "prompt_index", entry["prompt_index"])
        rows.append(frame)
    table = pd.concat(rows, ignore_index=True)
    for i, (key, value) in enumerate(labels.items()):
        table.insert(i, key, value)
    return table


def summarize(per_image: pd.DataFrame, by: str | list[str]) -> pd.DataFrame:
    """Mean of every numeric score column per group (images of all prompts weigh the same)."""
    numeric = [c for c in per_image.columns if pd.api.types.is_float_dtype(per_image[c])]
    summary = per_image.groupby(by, sort=False)[numeric].mean().reset_index()
    summary.insert(
        len([by] if isinstance(by, str) else by), "n_images", per_image.groupby(by, sort=False).size().values
    )
    return summary


def score_conditions(exp: Any, conditions: dict[str, Path], subjects: Sequence[str], tokens: Sequence[str] = ()):
    """Per-image scores of every condition's samples, their per-condition means, and the comparability flags."""
    from experiments.report import flags

    scorer = make_scorer(exp.cfg.eval, exp.cfg.data.root)
    per_image = pd.concat(
        [score_folder(scorer, f, subjects, tokens, condition=c) for c, f in conditions.items()], ignore_index=True
    )
    return per_image, summarize(per_image, "condition"), flags(exp, scorer.pretrained)
