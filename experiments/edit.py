"""Single-image editing without inversion (PAPER.md §5.4): `make edit`.

    python -m experiments.edit [hydra overrides]               # parameters: conf/experiment/edit.yaml

1. trains each method (PaRa, and a one-shot LoRA with the same budget) on ONE photo and its caption through the
   harness (`data.images=[<photo>]`, `data.prompt_template=<caption>`, no flips);
2. samples the caption (prompt 0, reconstruction) and every edited prompt from `sample.images_per_prompt` fresh
   seeds each, the same seeds for every method;
3. reports per method and prompt: SSIM averaged over all pairs of seeds (consistency), LPIPS to the source photo
   (fidelity), CLIP score and CLIP-T of the prompt without the identifier (edit alignment), plus a mean over
   the edits → `edit.{csv,md}`, `per_image.{csv,md}`, `grid.png`, `provenance.json` in `<out>/<subject>-<photo>/`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from pandas.api.types import is_float_dtype

from eval import metrics
from eval.clip_score import clip_score_of
from eval.score import load_image
from experiments.common import (
    Experiment,
    adapter_path,
    load_experiment,
    main_entry,
    sample_condition,
    subject_info,
    train,
    with_adapter,
)
from experiments.report import file_digest, flags, label_grid, sampling_fingerprint, write_outputs
from experiments.scoring import make_scorer
from para.core.data import image_files, subject_dir
from para.core.sampling import PromptSpec, read_prompts


@dataclass
class Params:
    name: str = "edit"
    out: str = "runs/edit"
    subject: str = "dog"
    image: str = "00.jpg"
    token: str = "sks"
    caption: str = "a photo of {token} {class_word}"
    edits: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: ["para", "lora"])
    steps: int = 200


def edit_prompts(p: Params) -> list[PromptSpec]:
    """Prompt 0 = the caption, then the edits; the clean prompt (CLIP) has the identifier removed."""
    class_word = subject_info(p.subject).class_word
    specs = []
    for i, template in enumerate([p.caption, *p.edits]):
        try:
            prompt = template.format(token=p.token, class_word=class_word)
            clean = " ".join(template.format(token="", class_word=class_word).split())
        except (KeyError, IndexError) as err:
            raise ValueError(
                f"prompt {template!r}: only {{token}} and {{class_word}} can be filled in ({err})"
            ) from err
        specs.append(PromptSpec(i, prompt, clean))
    return specs


def train_one_shot(exp: Experiment, method: str) -> Path:
    """One method on the single photo. The folder name carries the photo and a digest of the caption."""
    p = exp.params
    caption = hashlib.sha256(p.caption.encode()).hexdigest()[:8]
    run_dir = (
        exp.out / "train" / method / p.subject / f"{Path(p.image).stem}-{caption}-steps{p.steps}-seed{exp.cfg.seed}"
    )
    return train(exp, f"method={method}", f"subject={p.subject}", f"steps={p.steps}", f"run_dir={run_dir}")


def score_method(
    scorer: Any, folder: Path, method: str, subject: str, token: str, source
) -> tuple[pd.DataFrame, list[dict]]:
    """Per-image scores and per-prompt rows of one method: SSIM over seeds (consistency), and the mean of each of
    the protocol's per-image scores (DreamBench: LPIPS to the source, the CLIP score, CLIP-T, DINO; the world:
    identity, similarity, prompt fidelity)."""
    frames, rows = [], []
    for entry in read_prompts(folder):
        images = [load_image(folder / name) for name in entry["images"]]
        n = len(images)
        frame = scorer.score_images(images, [entry["prompt"]] * n, [entry["clean_prompt"]] * n, [subject], [token])
        if hasattr(scorer, "lpips_to"):  # DreamBench's LPIPS net
            frame.insert(0, "lpips_source", scorer.lpips_to(images, [source]))
        means = {c: frame[c].mean() for c in frame.columns if pd.api.types.is_float_dtype(frame[c])}
        if "clip_score" in frame:  # the authors' CLIP score: max(mean of the 100·cos terms, 0)
            means["clip_score"] = clip_score_of(torch.tensor(frame["clip_score"].tolist()))
        frame.insert(0, "image", entry["images"])
        frame.insert(0, "prompt", entry["clean_prompt"])
        frame.insert(0, "prompt_index", entry["prompt_index"])
        frame.insert(0, "method", method)
        frames.append(frame)
        rows.append(
            {
                "method": method,
                "prompt_index": entry["prompt_index"],
                "prompt": entry["clean_prompt"],
                "kind": "caption" if entry["prompt_index"] == 0 else "edit",
                "n_seeds": len(images),
                "ssim": metrics.mean_pairwise_ssim(images) if len(images) > 1 else float("nan"),
                **means,
            }
        )
    return pd.concat(frames, ignore_index=True), rows


def with_edit_means(per_prompt: pd.DataFrame) -> pd.DataFrame:
    """Adds one row per method: the mean over the edited prompts (the caption row is the reconstruction)."""
    edits = per_prompt[per_prompt["kind"] == "edit"]
    if edits.empty:
        return per_prompt
    means = (
        edits.groupby("method", sort=False)[
            [c for c in per_prompt.columns if c not in ("prompt_index", "n_seeds") and is_float_dtype(per_prompt[c])]
        ]
        .mean()
        .reset_index()
    )
    means = means.assign(prompt_index=-1, prompt="(mean over edits)", kind="edits", n_seeds=edits["n_seeds"].min())
    return pd.concat([per_prompt, means[per_prompt.columns]], ignore_index=True)


def run(argv: Sequence[str]) -> pd.DataFrame:
    """The whole experiment; returns the table (one row per method and prompt, plus the means over edits)."""
    exp = load_experiment("edit", Params, argv)
    p = exp.params
    specs = edit_prompts(p)
    source_path = subject_dir(exp.cfg.data.root, p.subject) / p.image
    if source_path not in image_files(source_path.parent):
        raise ValueError(f"experiment.image={p.image} is not a photo of {source_path.parent}")
    folder = exp.out / f"{p.subject}-{Path(p.image).stem}"
    samples = {}
    for method in p.methods:
        run_dir = train_one_shot(exp, method)
        fingerprint = sampling_fingerprint(exp, specs, adapters=[file_digest(adapter_path(run_dir))])
        samples[method] = sample_condition(
            exp, specs, folder / method, fingerprint, lambda _f, run_dir=run_dir: with_adapter(exp, run_dir)
        )

    scorer = make_scorer(exp.cfg.eval, exp.cfg.data.root)
    source = load_image(source_path)
    scored = [score_method(scorer, f, m, p.subject, p.token, source) for m, f in samples.items()]
    per_image = pd.concat([frame for frame, _ in scored], ignore_index=True)
    table = with_edit_means(pd.DataFrame([row for _, rows in scored for row in rows]))
    flag = flags(exp, scorer.pretrained)
    notes = [
        f"trained on {p.subject}/{p.image} only, caption {p.caption!r}, {p.steps} steps per method; "
        f"{exp.cfg.sample.images_per_prompt} seeds per prompt. ssim: mean over pairs of seeds (consistency, "
        "higher = more consistent); lpips_source: to the source photo (lower = closer); clip_score / clip_t "
        "(DreamBench) or prompt_fidelity (the world): edit alignment"
    ]
    rows = [(f"source: {p.subject}/{p.image}", [source])]
    for method, f in samples.items():
        rows += [(f"{method}: {e['clean_prompt']}", [load_image(f / n) for n in e["images"]]) for e in read_prompts(f)]
    grid = label_grid(rows, [f"seed {i}" for i in range(exp.cfg.sample.images_per_prompt)])
    write_outputs(
        exp,
        folder,
        "edit",
        "Single-image editing without inversion",
        per_image,
        table,
        flag,
        notes,
        grid,
        source=str(source_path),
        samples={m: str(f) for m, f in samples.items()},
    )
    return table


if __name__ == "__main__":
    main_entry(run)
