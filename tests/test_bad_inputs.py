"""The long tail of bad input (issue 24): every case of tests/bad_inputs/ is run in this process as the user types it,
and must answer with its exit code, no traceback, words naming the problem and a way out, and nothing of the user's
changed on disk (no run folder left saying `running`). docs/troubleshooting.md lists every case.

How a case is run and judged: tests/bad_inputs/runner.py. Faults (a full disk, a signal while sampling, a nan loss)
and `make plan`: tests/test_bad_inputs_faults.py. Every numeric setting's range is also tried with Hypothesis.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from bad_inputs import Case, cli, folders, tools
from bad_inputs.faults import FAULTS, MAKE, SIGNAL_CASE
from bad_inputs.runner import RUN, assert_answer, changed, command, fill, snapshot, statuses, with_defaults
from conftest import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CASES: list[Case] = [*cli.CASES, *folders.CASES, *tools.CASES]

# What the cases copy (`uses`): a finished tiny PaRa run trained with RUN's settings, and adapter folders of the
# methods without a LoRA form (their config.yaml and an adapter.safetensors whose trained tensors are random, so that
# every layer's change is far from zero), made once per session.
ADAPTERS = ("dreambooth", "loha", "svdiff")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_pipe_template) -> dict[str, Path]:
    import torch
    from omegaconf import OmegaConf

    from para.core import models
    from para.core.models import model_id
    from para.run.config import compose_config
    from para.run.registry import METHODS
    from para.run.runner import execute

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:  # the session's tiny pipeline, copied (conftest.shared_tiny)
        patch.setattr(models, "build_random_pipeline", lambda kind, seed=0: copy.deepcopy(tiny_pipe_template))
        execute(compose_config(*(fill(a, root) for a in RUN[:-1]), f"run_dir={root / 'para'}"))
    for name in ADAPTERS:
        cfg = compose_config(*(fill(a, root) for a in RUN[:-1]), f"method={name}", f"run_dir={root / name}")
        unet = copy.deepcopy(tiny_pipe_template.unet)
        method = METHODS[name](cfg.method, model_id(cfg.model))
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for param in method.attach(unet):
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)
        (root / name).mkdir()
        (root / name / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        method.save(unet, root / name / "adapter.safetensors")
    return {name: root / name for name in ("para", *ADAPTERS)}


# --- the table --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_case(c: Case, tmp_path, request, monkeypatch, capsys, caplog, shared_tiny):
    caplog.set_level(logging.INFO)
    for name in c.uses:
        shutil.copytree(request.getfixturevalue("trained")[name], tmp_path / name, symlinks=True)
    if c.setup:
        c.setup(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr(), caplog.clear()  # the command's output only (not the session's training, say)
    argv = [fill(a, tmp_path) for a in (with_defaults(RUN, list(c.argv)) if c.tool == "run" else c.argv)]
    code = command(c, argv, monkeypatch)
    captured = capsys.readouterr()
    output = captured.out + captured.err + caplog.text
    says, way = ([fill(f, tmp_path) for f in fragments] for fragments in (c.says, c.way))
    assert_answer(output, code, c.code, says, way, c.absent)
    unexpected = [k for k in changed(before, snapshot(tmp_path)) if not any(fnmatch.fnmatch(k, w) for w in c.writes)]
    assert not unexpected, f"changed on disk: {unexpected}"
    assert "running" not in statuses(tmp_path).values(), statuses(tmp_path)
    if c.check:
        c.check(tmp_path, output)


def test_the_trained_runs_are_never_changed(trained):
    """Every case works on copies: the session's run still says finished, the adapters are whole."""
    from para.core.method import safetensors_problem

    assert json.loads((trained["para"] / "metrics.json").read_text())["status"] == "finished"
    assert all(safetensors_problem(folder / "adapter.safetensors") is None for folder in trained.values())


# --- every numeric setting's range, by Hypothesis ---------------------------------------------------------------


@pytest.fixture(scope="module")
def base_config():
    from para.run.config import compose_config

    return compose_config("model=tiny", "run_dir=unused")


def _values_of(kind: type):
    special = st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63 - 1])
    if kind is float:
        return st.floats(allow_nan=True, allow_infinity=True) | special.map(float)
    return st.integers(min_value=-(2**63), max_value=2**63 - 1) | special


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_numeric_setting_refuses_exactly_its_out_of_range_values(base_config, data):
    """For any value of any numeric setting (nan, inf and 64-bit extremes included), the preflight's config check
    names the setting when — and only when — the value is outside its range or not finite; nothing raises."""
    import math

    from omegaconf import OmegaConf

    from para.run.config import RANGES, config_problems, subject_prompt_count

    key = data.draw(st.sampled_from(sorted(k for k in RANGES if k != "method.lr")))
    kind = type(OmegaConf.select(base_config, key)) if OmegaConf.select(base_config, key) is not None else int
    value = data.draw(_values_of(float if kind is float else int))
    cfg = OmegaConf.create(OmegaConf.to_container(base_config))  # the schema's types are not needed here
    OmegaConf.update(cfg, key, value)
    problems = [p for p in config_problems(cfg) if p.startswith(f"{key}=")]
    ok, allowed = RANGES[key]
    finite = not isinstance(value, float) or math.isfinite(value) or key == "lock_wait"
    in_range = ok(value) and finite
    if in_range and key == "sample.num_prompts":  # also bounded by the subject's prompt list (dog: 25)
        in_range = value <= subject_prompt_count(cfg.subject)
        allowed = "(the evaluation prompts of subject dog)" if not in_range else allowed
    assert bool(problems) == (not in_range), (key, value, problems)
    assert all(allowed in p for p in problems)


# --- the suite and docs/troubleshooting.md ----------------------------------------------------------------------

ALL_IDS = [c.id for c in (*CASES, *FAULTS, SIGNAL_CASE, *MAKE)]


def test_troubleshooting_lists_every_case_and_no_other():
    doc = (REPO / "docs" / "troubleshooting.md").read_text()
    section = doc.split("## Every bad input the suite tries", 1)[1]
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)
    assert sorted(listed) == sorted(ALL_IDS), set(ALL_IDS) ^ set(listed)
    assert len(set(ALL_IDS)) == len(ALL_IDS) >= 100
