"""Known answers through the harness itself, in the world (docs/world.md): a method that works learns the subject.

`python run.py model=world subject=<world subject> method=<m>` with the world's defaults, run in-process: before
training the base model's samples of the subject's prompts show it with probability <= 0.05 (the gate,
world/assets/build.json); after training the subject's identity is >= 0.7 and the prompts' other attributes still
show. Each planted harness bug of tests/mutations.py must break at least one of these answers
(`test_every_planted_bug_breaks_a_known_answer`, slow).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mutations import MUTATIONS

from para.run.config import compose_config
from para.run.runner import execute
from world.scorer import ASSETS

SUBJECT = "sun_disc"
# what a world run must show after training (the base model shows the subject with p <= 0.05: the gate)
EXPECTED = {"subject_identity": 0.7, "prompt_fidelity": 0.6}
# Fewer samples than a table cell (8 prompts x 2 images), the rest as `model=world` sets it.
QUICK = ["logger=none", "sample.num_prompts=8", "sample.images_per_prompt=2", "plan.cache_dir=null"]


def world_run(run_dir: Path, method: str, *overrides: str) -> dict:
    cfg = compose_config(
        "model=world", f"subject={SUBJECT}", f"method={method}", f"run_dir={run_dir}", *QUICK, *overrides
    )
    return execute(cfg)


def broken_answers(metrics: dict) -> list[str]:
    """The known answers a finished world run does not give (empty: all given)."""
    scores = metrics.get("scores") or {}
    broken = [
        f"{key} >= {low} (got {scores.get(key)})"
        for key, low in EXPECTED.items()
        if scores.get(key) is None or scores[key] < low
    ]
    if metrics.get("status") != "finished":
        broken.append(f"status finished (got {metrics.get('status')})")
    return broken


@pytest.fixture(scope="module")
def world_runs(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("world")
    return {m: world_run(root / m, m) for m in ("dreambooth", "lora", "para")}


def test_the_world_passed_its_gate():
    build = json.loads((ASSETS / "build.json").read_text())
    assert build["gate"]["passed"], build["gate"]["checks"]
    assert max(build["gate"]["base_identity"].values()) <= 0.05  # the subjects are unknown before training


@pytest.mark.parametrize("method", ["dreambooth", "lora", "para"])
def test_a_method_learns_the_subject_and_keeps_the_prompts(world_runs, method):
    metrics = world_runs[method]
    assert broken_answers(metrics) == []
    assert metrics["scores"]["protocol"] == "world" and "WORLD" in metrics["scores"]["note"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_every_planted_bug_breaks_a_known_answer(tmp_path, name):
    method = "lora" if name == "lora_scale_lost" else "dreambooth"
    with MUTATIONS[name]():
        metrics = world_run(tmp_path / name, method)
    assert broken_answers(metrics), f"{name}: every known answer still holds: {metrics.get('scores')}"
