"""Known answers through the harness itself, in the world (docs/world.md): a method that works learns the subject.

`python run.py model=world subject=sun_disc method=<m>`, run in-process (the slow set: a few minutes in all):
before training the base model's samples of the subject's prompts show it with probability <= 0.05 (the gate,
world/assets/build.json); after training each answer below holds. Each planted harness bug of tests/mutations.py
must break at least one of them (`test_every_planted_bug_breaks_a_known_answer`); the bugs the world cannot see yet
are listed as strict expected failures with the reason (docs/world.md "Mutation check").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from mutations import MUTATIONS

from para.run.config import compose_config
from para.run.runner import execute
from world.scorer import ASSETS

SUBJECT = "sun_disc"


@dataclass(frozen=True)
class Answer:
    """A run (method and settings) and the bounds its scores must meet; measured values in docs/world.md."""

    method: str
    overrides: tuple[str, ...]
    at_least: dict
    at_most: dict


ANSWERS = {
    # the world's defaults (conf/model_method/world_*.yaml), 8 prompts x 2 images (6 of them name the subject);
    # measured (docs/world.md): DreamBooth identity 1.00, LoRA 0.99, PaRa (light) 0.45, prompt fidelity 0.95-1.0
    "dreambooth": Answer("dreambooth", ("sample.num_prompts=8", "sample.images_per_prompt=2"),
                         {"subject_identity": 0.7, "prompt_fidelity": 0.6}, {}),
    "lora": Answer("lora", ("sample.num_prompts=8", "sample.images_per_prompt=2"),
                   {"subject_identity": 0.35, "prompt_fidelity": 0.5}, {}),
    # PaRa trained lightly (400 steps at lr 2e-3), all 20 prompts x 4 images: it learns the subject under its
    # identifier without drawing it for the bare class word (measured: identity 0.45, leak 0.125 on 16 images)
    "para_identifier": Answer("para", ("steps=400", "method.lr=2e-3", "sample.images_per_prompt=4"),
                              {"subject_identity": 0.25}, {"leak": 0.4}),
}  # fmt: skip


def world_run(run_dir: Path, answer: Answer) -> dict:
    cfg = compose_config(
        "model=world", f"subject={SUBJECT}", f"method={answer.method}", f"run_dir={run_dir}", "logger=none",
        "plan.cache_dir=null", *answer.overrides,
    )  # fmt: skip
    return execute(cfg)


def broken_answers(metrics: dict, answer: Answer) -> list[str]:
    """The bounds a finished run does not meet (empty: the answer holds)."""
    scores = metrics.get("scores") or {}
    broken = [
        f"{k} >= {low} (got {scores.get(k)})" for k, low in answer.at_least.items() if not scores.get(k, -1) >= low
    ]
    broken += [
        f"{k} <= {high} (got {scores.get(k)})" for k, high in answer.at_most.items() if not scores.get(k, 2) <= high
    ]
    if metrics.get("status") != "finished":
        broken.append(f"status finished (got {metrics.get('status')})")
    return broken


def test_the_world_passed_its_gate():
    build = json.loads((ASSETS / "build.json").read_text())
    assert build["gate"]["passed"], build["gate"]["checks"]
    assert max(build["gate"]["base_identity"].values()) <= 0.05  # the subjects are unknown before training


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_a_method_learns_the_subject_and_keeps_the_prompts(tmp_path, name):
    metrics = world_run(tmp_path / name, ANSWERS[name])
    assert broken_answers(metrics, ANSWERS[name]) == []
    assert metrics["scores"]["protocol"] == "world" and "WORLD" in metrics["scores"]["note"]


# Which answer each planted bug is tried against: the one whose run goes through the code the bug breaks.
# (PaRa's light training is the sensitive one: DreamBooth's 800 steps learn the subject through most bugs.)
TRIED_ON = {
    "drop_identifier": "para_identifier",
    "latents_unscaled": "para_identifier",
    "text_embeds_truncated": "para_identifier",
    "lora_scale_lost": "lora",
}
# Bugs the world does not see yet, and why (docs/world.md): strict, so that a world that catches one says so.
UNSEEN = {
    # (the random-weight suite catches both: tests/test_conditioning.py's oracle sees the zeroed pooled embedding;
    # a LoRA file reloaded in stock diffusers draws other images without its scale)
    "pooled_zeroed": "a subject trained with the pooled embedding zeroed is still learnt: the world model leans on "
    "its token embeddings",
    "lora_scale_lost": "the world's LoRA samples at its calibrated α = 1.0, where a lost scale changes nothing",
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=UNSEEN[n])) if n in UNSEEN else n
        for n in sorted(MUTATIONS)
    ],
)
def test_every_planted_bug_breaks_a_known_answer(tmp_path, name):
    answer = ANSWERS[TRIED_ON.get(name, "dreambooth")]
    with MUTATIONS[name]():
        metrics = world_run(tmp_path / name, answer)
    assert broken_answers(metrics, answer), f"{name}: the known answer still holds: {metrics.get('scores')}"
