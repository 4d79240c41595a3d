"""Multi-subject generation without retraining (PAPER.md §5.2): `make multi-subject`.

    python -m experiments.multi_subject [hydra overrides]      # parameters: conf/experiment/multi_subject.yaml

1. trains (or reuses) one PaRa and one LoRA per subject through the harness (`<out>/train/...`);
2. for each mode, combines the PaRa adapters (`para.combine.CombinedPaRa`), saves the combination as
   `<out>/<pair>/para-<mode>/adapter.safetensors` and samples from a fresh base model that loads that file;
3. loads the LoRA files together through diffusers/peft (`load_lora_weights` + `set_adapters`, each at
   `lora_scale`) and samples with the same prompts and seeds (paired noise);
4. scores every image against both subjects' photos (DINO, CLIP-I per subject, and their minimum) and its prompt
   (CLIP-T) → `multi_subject.{csv,md}`, `per_image.{csv,md}`, `grid.png`, `provenance.json` in `<out>/<pair>/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from experiments.common import (
    Experiment,
    adapter_path,
    fresh_pipeline,
    limit,
    load_experiment,
    main_entry,
    multi_subject_prompts,
    sample_condition,
    sample_loras,
    train,
)
from experiments.report import condition_grid, file_digest, sampling_fingerprint, write_outputs
from experiments.scoring import score_conditions
from para.combine import CombinedPaRa, check_mode
from para.core.sampling import PromptSpec


@dataclass
class Params:
    name: str = "multi_subject"
    out: str = "runs/multi_subject"
    subjects: list[str] = field(default_factory=lambda: ["dog", "pink_sunglasses"])
    tokens: list[str] = field(default_factory=lambda: ["sks", "zwx"])
    para_ranks: list[int] = field(default_factory=lambda: [2, 8])
    para_steps: int = 200
    lora_rank: int = 16
    lora_steps: int = 1000
    lora_scale: float = 1.0
    modes: list[str] = field(default_factory=lambda: ["concat", "sequential", "additive"])
    gamma: float | None = 0.025
    prompts: list[str] = field(default_factory=list)


def check(p: Params) -> None:
    """Refuse inconsistent parameters before anything trains."""
    if len(p.subjects) < 2:
        raise ValueError(f"experiment.subjects={p.subjects}: combining needs at least 2 subjects")
    for key in ("tokens", "para_ranks"):
        if len(getattr(p, key)) != len(p.subjects):
            raise ValueError(f"experiment.{key}={getattr(p, key)} needs one entry per subject ({len(p.subjects)})")
    if not p.modes:
        raise ValueError("experiment.modes is empty; expected some of ['concat', 'sequential', 'additive']")
    for mode in p.modes:
        check_mode(mode)
    if not p.prompts:
        raise ValueError("experiment.prompts is empty")


def train_adapters(exp: Experiment, method: str, ranks: Sequence[int], steps: int) -> list[Path]:
    p = exp.params
    return [
        train(exp, f"method={method}", f"subject={s}", f"method.rank={r}", f"data.token={t}", f"steps={steps}")
        for s, t, r in zip(p.subjects, p.tokens, ranks, strict=True)
    ]


def combined_para(exp: Experiment, para_runs: list[Path], mode: str, specs: list[PromptSpec], folder: Path) -> Path:
    """Samples of the PaRa adapters combined in `mode`, from the saved combined adapter file."""
    sources = [adapter_path(r) for r in para_runs]
    fingerprint = sampling_fingerprint(
        exp, specs, mode=mode, gamma=exp.params.gamma, adapters=[file_digest(s) for s in sources]
    )

    def build(folder: Path):
        path = CombinedPaRa.from_files(sources, mode=mode, gamma=exp.params.gamma).save(
            None, folder / "adapter.safetensors"
        )
        pipe = fresh_pipeline(exp)
        CombinedPaRa.load(pipe.unet, path, exp.base_model).prepare_for_sampling(pipe.unet, merge=exp.cfg.sample.merge)
        return pipe

    return sample_condition(exp, specs, folder, fingerprint, build)


def run(argv: Sequence[str]) -> pd.DataFrame:
    """The whole experiment; returns the summary table (one row per condition)."""
    exp = load_experiment("multi_subject", Params, argv)
    p = exp.params
    check(p)
    specs = limit(multi_subject_prompts(p.prompts, p.subjects, p.tokens), exp.cfg.sample.num_prompts)
    para_runs = train_adapters(exp, "para", p.para_ranks, p.para_steps)
    lora_runs = train_adapters(exp, "lora", [p.lora_rank] * len(p.subjects), p.lora_steps)

    folder = exp.out / "+".join(p.subjects)
    conditions = {
        f"para-{mode}": combined_para(exp, para_runs, mode, specs, folder / f"para-{mode}") for mode in p.modes
    }
    conditions["lora-together"] = sample_loras(
        exp, [adapter_path(r) for r in lora_runs], p.lora_scale, specs, folder / "lora-together"
    )

    per_image, summary, flag = score_conditions(exp, conditions, p.subjects, p.tokens)
    notes = [
        f"subjects {p.subjects} (tokens {p.tokens}), PaRa ranks {p.para_ranks} ({p.para_steps} steps), "
        f"LoRA r{p.lora_rank} ({p.lora_steps} steps) at scale {p.lora_scale}, γ cap {p.gamma} (concat); "
        f"{len(specs)} prompts x {exp.cfg.sample.images_per_prompt} images; "
        "*_min (dino_min, clip_i_min; the world: identity_min): the less visible subject"
    ]
    grid = condition_grid(conditions, specs, p.subjects, exp.cfg.data.root)
    write_outputs(
        exp,
        folder,
        "multi_subject",
        "Multi-subject generation without retraining",
        per_image,
        summary,
        flag,
        notes,
        grid,
        conditions={c: str(f) for c, f in conditions.items()},
    )
    return summary


if __name__ == "__main__":
    main_entry(run)
