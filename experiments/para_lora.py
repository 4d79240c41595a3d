"""PaRa together with an existing LoRA, in both orders (PAPER.md §5.3): `make para-lora`.

    python -m experiments.para_lora [hydra overrides]          # parameters: conf/experiment/para_lora.yaml

1. trains (or reuses) a PaRa adapter on one subject and, unless `experiment.lora_file` names an existing LoRA,
   our LoRA baseline on another subject (its `adapter.safetensors` is a diffusers-format LoRA file);
2. samples four conditions with the same prompts and seeds: PaRa alone, the LoRA alone (at scale s), PaRa then
   LoRA `(I − QQᵀ)W0 + s·BA` and LoRA then PaRa `(I − QQᵀ)(W0 + s·BA)` (`para.combine.para_with_lora`; the
   LoRA always goes through diffusers/peft `load_lora_weights`);
3. scores every image against each subject's photos and its prompt → `para_lora.{csv,md}`, `per_image.{csv,md}`,
   `grid.png`, `provenance.json` in `<out>/<para subject>+<lora>/`.
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
    method_of,
    multi_subject_prompts,
    sample_condition,
    sample_loras,
    train,
    with_adapter,
)
from experiments.report import condition_grid, file_digest, sampling_fingerprint, write_outputs
from experiments.scoring import score_conditions
from para.combine import LORA_ORDERS, lora_scale_of, para_with_lora
from para.core.sampling import PromptSpec


@dataclass
class Params:
    name: str = "para_lora"
    out: str = "runs/para_lora"
    para_subject: str = "dog"
    para_token: str = "sks"
    para_rank: int = 16
    para_steps: int = 200
    lora_subject: str | None = "pink_sunglasses"
    lora_token: str = "zwx"
    lora_rank: int = 16
    lora_steps: int = 1000
    lora_file: str | None = None
    lora_scale: float | None = None
    orders: list[str] = field(default_factory=lambda: list(LORA_ORDERS))
    prompts: list[str] = field(default_factory=list)


def check(p: Params) -> None:
    for order in p.orders:
        if order not in LORA_ORDERS:
            raise ValueError(f"unknown order {order!r} in experiment.orders; expected some of {list(LORA_ORDERS)}")
    if p.lora_file is None and p.lora_subject is None:
        raise ValueError("experiment.lora_subject=null needs experiment.lora_file=<an existing LoRA .safetensors>")
    if p.lora_file is not None and not Path(p.lora_file).is_file():
        raise ValueError(f"experiment.lora_file={p.lora_file} does not exist")
    if p.lora_scale is not None and p.lora_scale < 0:
        raise ValueError(f"experiment.lora_scale={p.lora_scale} is out of range; expected >= 0 or null")
    if not p.prompts:
        raise ValueError("experiment.prompts is empty")


def ordered(
    exp: Experiment, para_run: Path, lora_file: Path, scale: float, order: str, specs: list[PromptSpec], folder: Path
) -> Path:
    """Samples of PaRa and the LoRA applied in `order`."""
    fingerprint = sampling_fingerprint(
        exp, specs, order=order, scale=scale, adapters=[file_digest(adapter_path(para_run)), file_digest(lora_file)]
    )

    def build(_folder: Path):
        pipe = fresh_pipeline(exp)
        para_with_lora(pipe, method_of(para_run), adapter_path(para_run), lora_file, scale, order)
        return pipe

    return sample_condition(exp, specs, folder, fingerprint, build)


def alone(exp: Experiment, para_run: Path, specs: list[PromptSpec], folder: Path) -> Path:
    """Samples of the PaRa adapter alone (the reference the combinations are compared with)."""
    fingerprint = sampling_fingerprint(exp, specs, adapters=[file_digest(adapter_path(para_run))])
    return sample_condition(exp, specs, folder, fingerprint, lambda _folder: with_adapter(exp, para_run))


def run(argv: Sequence[str]) -> pd.DataFrame:
    """The whole experiment; returns the summary table (one row per condition)."""
    exp = load_experiment("para_lora", Params, argv)
    p = exp.params
    check(p)
    subjects = [p.para_subject] + ([p.lora_subject] if p.lora_subject else [])
    tokens = [p.para_token, p.lora_token][: len(subjects)]
    specs = limit(multi_subject_prompts(p.prompts, subjects, tokens), exp.cfg.sample.num_prompts)
    para_run = train(
        exp,
        "method=para",
        f"subject={p.para_subject}",
        f"method.rank={p.para_rank}",
        f"data.token={p.para_token}",
        f"steps={p.para_steps}",
    )
    if p.lora_file:
        lora_file = Path(p.lora_file)
    else:
        lora_run = train(
            exp,
            "method=lora",
            f"subject={p.lora_subject}",
            f"method.rank={p.lora_rank}",
            f"data.token={p.lora_token}",
            f"steps={p.lora_steps}",
        )
        lora_file = adapter_path(lora_run)
    scale = p.lora_scale if p.lora_scale is not None else lora_scale_of(lora_file)

    folder = exp.out / f"{p.para_subject}+{p.lora_subject or Path(p.lora_file).stem}"
    conditions = {
        "para": alone(exp, para_run, specs, folder / "para"),
        "lora": sample_loras(exp, [lora_file], scale, specs, folder / "lora"),
    }
    for order in p.orders:
        conditions[order] = ordered(exp, para_run, lora_file, scale, order, specs, folder / order)

    per_image, summary, flag = score_conditions(exp, conditions, subjects, tokens)
    notes = [
        f"PaRa r{p.para_rank} on {p.para_subject} ({p.para_steps} steps) + LoRA {lora_file} at scale s={scale}; "
        f"{len(specs)} prompts x {exp.cfg.sample.images_per_prompt} images; the paper expects para_then_lora "
        f"to keep the PaRa subject's score (dino_{p.para_subject}; the world: identity_{p.para_subject}) near "
        "`para` and lora_then_para to lose it"
    ]
    grid = condition_grid(conditions, specs, subjects, exp.cfg.data.root)
    write_outputs(
        exp,
        folder,
        "para_lora",
        "PaRa + an existing LoRA, both orders",
        per_image,
        summary,
        flag,
        notes,
        grid,
        lora_file=str(lora_file),
        lora_scale=scale,
        conditions={c: str(f) for c, f in conditions.items()},
    )
    return summary


if __name__ == "__main__":
    main_entry(run)
