"""The counts shipped with the package (para.run.plan_shipped): a shipped setting is not counted again, other
library versions are, and (slow set) the shipped counts are what counting gives."""

from __future__ import annotations

import json

import pytest
from conftest import QUICK, compose_config

from para.run import plan, plan_count, plan_eval, plan_shipped
from para.run.plan_count import SampleCounts, TrainCounts, count_sampling, count_training


@pytest.fixture
def fresh(monkeypatch):
    """Nothing counted in this process; the shipped table re-read (and restored afterwards)."""
    monkeypatch.setattr(plan_count, "_MEMORY", {})
    plan_shipped._table.cache_clear()
    yield
    plan_shipped._table.cache_clear()


def test_a_shipped_setting_is_looked_up_not_counted(fresh, monkeypatch, tmp_path):
    cfg = compose_config(*QUICK, "method=para", "run_dir=unused", "plan.cache_dir=null")
    with plan_shipped.counting() as recorded:
        counted = plan.estimate(cfg, plan.CUDA)
    assert len(recorded) == 3  # the train and the sample counts of one setting, and the evaluation nets' counts
    table = tmp_path / "plan_counts.json"
    table.write_text(json.dumps({"libraries": plan_shipped.library_versions(), "counts": recorded}))
    monkeypatch.setattr(plan_shipped, "TABLE", table)
    plan_shipped._table.cache_clear()
    plan_count.forget()

    def no_counting(*args, **kwargs):
        raise AssertionError("a shipped setting was counted")

    monkeypatch.setattr(plan_count, "count_training", no_counting)
    monkeypatch.setattr(plan_count, "count_sampling", no_counting)
    monkeypatch.setattr(plan_eval, "count_eval", no_counting)
    assert plan.estimate(cfg, plan.CUDA) == counted
    plan_count.forget()  # other library versions (a GPU user's own torch): the table does not apply
    monkeypatch.setattr(plan_count, "library_versions", lambda: "torch==0.0 diffusers==0.0")
    with pytest.raises(AssertionError, match="was counted"):
        plan.estimate(cfg, plan.CUDA)


def test_the_papers_commands_are_shipped_for_the_pinned_libraries(fresh):
    """The paper's three commands on a CUDA card find their plan in the table (constraints.txt's libraries)."""
    shipped = json.loads(plan_shipped.TABLE.read_text())
    if shipped["libraries"] != plan_shipped.library_versions():
        pytest.skip(f"the table is for {shipped['libraries']}, this environment has {plan_shipped.library_versions()}")
    for method in plan_shipped.PAPER_METHODS:
        cfg = compose_config(f"method={method}", "subject=dog", "run_dir=unused")
        setting = plan.setting_of(cfg, plan.CUDA)
        for part, cls in (("train", TrainCounts), ("sample", SampleCounts)):
            assert plan_shipped.lookup(setting.shipped_key(part), cls) is not None, (method, part)


@pytest.mark.slow
@pytest.mark.parametrize("method", plan_shipped.PAPER_METHODS)
def test_the_shipped_counts_are_what_counting_gives(fresh, method):
    """~10 s per method: the table is a cache of counts, never a number of its own. When this fails, the trainer or
    a method changed what is counted: `make plan-counts` rewrites the table."""
    cfg = compose_config(f"method={method}", "subject=dog", "run_dir=unused")
    setting = plan.setting_of(cfg, plan.CUDA)
    for part, cls, count in (
        ("train", TrainCounts, lambda: count_training(setting, cfg)),
        ("sample", SampleCounts, lambda: count_sampling(setting)),
    ):
        shipped = plan_shipped.lookup(setting.shipped_key(part), cls)
        assert shipped is not None, f"{method} {part}: not in {plan_shipped.TABLE.name}: `make plan-counts`"
        assert shipped == count(), f"{method} {part}: the shipped counts are stale: `make plan-counts`"
