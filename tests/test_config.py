"""Config composition: every method × subjects composes; typos, wrong types and bad ranges fail clearly."""

from __future__ import annotations

import pytest
from conftest import compose_config
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from para.run.config import validate
from para.run.registry import METHODS


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("subject", ["dog", "bear_plushie", "cat2"])
def test_every_method_and_subject_composes(method, subject):
    cfg = compose_config(f"method={method}", f"subject={subject}", "steps=200")
    validate(cfg)
    assert cfg.method.name == method and cfg.subject.name == subject and cfg.steps == 200
    assert cfg.run_dir == f"runs/{method}/{subject}/steps200-seed0"  # sdxl is the default model


def test_all_30_subjects_exist_with_their_kind():
    from pathlib import Path

    from conftest import REPO

    files = Path(REPO / "conf/subject").glob("*.yaml")  # beside them, the world's (docs/world.md)
    names = sorted(p.stem for p in files if p.read_text().startswith("# DreamBooth subject"))
    assert len(names) == 30
    live = {n for n in names if compose_config(f"subject={n}").subject.kind == "live"}
    assert live == {"cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"}


def test_paper_defaults():
    para = compose_config("method=para").method
    assert (para.rank, para.gamma, para.subset) == (16, 0.025, "noxattn")
    lora = compose_config("method=lora").method
    assert (lora.rank, lora.scale, lora.alpha) == (16, 2.2, None)
    cfg = compose_config()
    assert cfg.model.path == "stabilityai/stable-diffusion-xl-base-1.0" and cfg.sample.scheduler == "ddim"
    assert compose_config("model=tiny").run_dir == "runs/tiny/para/dog/steps200-seed0"


@pytest.mark.parametrize(
    "override, error",
    [
        ("method.rnak=4", ConfigCompositionException),  # typo in a key
        ("steps=abc", ConfigCompositionException),  # wrong type
        ("method=nope", ConfigCompositionException),
        ("subject=unicorn", ConfigCompositionException),
        ("train.optimzer=adamw", ConfigCompositionException),
    ],
)
def test_bad_overrides_fail_at_composition(override, error):
    with pytest.raises((error, ConfigKeyError, ValidationError)) as info:
        compose_config(override)
    message = str(info.value) + str(info.value.__cause__)
    assert any(word in message for word in ("rnak", "abc", "nope", "unicorn", "optimzer"))


def test_unknown_group_choice_lists_the_valid_names():
    with pytest.raises(ConfigCompositionException) as info:
        compose_config("subject=unicorn")
    assert "dog" in str(info.value) and "backpack" in str(info.value)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("steps=0", "steps=0"),
        ("method.rank=0", "method.rank=0"),
        ("method.gamma=1.5", "method.gamma=1.5"),
        ("method.gamma=0", "method.gamma=0"),
        ("method.lr=-1", "method.lr=-1"),
        ("sample.images_per_prompt=0", "sample.images_per_prompt=0"),
        ("model.resolution=100", "multiple of 8"),
        ("method.subset=exca", "noxattn"),
        ("method.init=zeros", "gaussian"),
        ("train.optimizer=sgd", "adamw"),
        ("sample.num_prompts=26", "1..25"),
    ],
)
def test_out_of_range_values_are_refused_with_the_allowed_range(override, fragment):
    with pytest.raises(ValueError, match=None) as info:
        validate(compose_config(override))
    assert fragment in str(info.value)


# A value that every numeric setting must refuse, where -1 is allowed (lokr: -1 = peft's automatic factor).
BAD_VALUE = {"method.decompose_factor": 1}


def numeric_settings() -> list[tuple[str, str]]:
    """(method, key) for every int/float field of the run schemas and of every method's config."""
    from dataclasses import fields

    from para.run import config as schema

    def numeric(f) -> bool:
        kind = str(f.type)
        return ("int" in kind or "float" in kind) and "bool" not in kind

    groups = {"": schema.Config, "model.": schema.ModelConfig, "data.": schema.DataConfig}
    groups |= {"train.": schema.TrainConfig, "sample.": schema.SampleConfig, "eval.": schema.EvalConfig}
    groups |= {"logger.": schema.LoggerConfig}
    keys = [("para", p + f.name) for p, cls in groups.items() for f in fields(cls) if numeric(f)]
    return keys + [(m, f"method.{f.name}") for m, cls in METHODS.items() for f in fields(cls.Config) if numeric(f)]


def test_11_every_numeric_setting_refuses_out_of_range_values():
    """Item 11: some numeric settings (e.g. train.grad_clip=-1, which flips every gradient) were accepted."""
    from omegaconf import OmegaConf

    settings = numeric_settings()
    assert ("para", "train.grad_clip") in settings and ("lora", "method.alpha") in settings and len(settings) > 35
    bases = {m: compose_config(f"method={m}", "model=tiny") for m in METHODS}
    for base in bases.values():
        validate(base)  # the defaults pass
    accepted = []
    for method, key in settings:
        cfg = bases[method].copy()
        OmegaConf.update(cfg, key, BAD_VALUE.get(key, -1))
        try:
            validate(cfg)
            accepted.append(key)
        except ValueError as err:
            if f"{key}=" not in str(err):
                accepted.append(key)
    assert not accepted, f"no range check refuses a bad value of {accepted}"


def test_all_problems_are_reported_at_once():
    with pytest.raises(ValueError) as info:
        validate(compose_config("steps=0", "train.grad_clip=-1", "train.log_every=0"))
    assert all(k in str(info.value) for k in ("steps=0", "train.grad_clip=-1", "train.log_every=0"))
