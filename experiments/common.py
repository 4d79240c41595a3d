"""Shared plumbing of the experiments: configuration, training runs through the harness, pipelines, sampling.

An experiment is composed exactly like `python run.py`: conf/config.yaml + `+experiment=<name>` (the preset in
conf/experiment/<name>.yaml, whose `experiment:` node holds the experiment's own parameters) + the user's
overrides. So `model=tiny`, `eval.backbones=random`, `sample.steps=4`, `data.root=...` and
`experiment.<key>=...` all work the same way on every command, and typos fail at composition.

Adapters always come from the harness itself: `train()` composes a run config and calls `para.run.runner.execute`,
which writes the run folder (or keeps a finished run made with the same training settings, and refuses one made
with others).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from para.core.method import Method
from para.core.models import load_pipeline, model_id, resolve_device
from para.core.sampling import PromptSpec, generate, image_name
from para.run.config import register_configs, validate
from para.run.registry import METHODS
from para.run.runner import execute

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
log = logging.getLogger("experiments")


def compose(overrides: Sequence[str]) -> DictConfig:
    """The config `python run.py <overrides>` would run with (Hydra compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def override_key(override: str) -> str:
    """`+a.b=1` → `a.b` (the key an override sets)."""
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """`base` without the keys that `extra` sets, then `extra`: Hydra refuses a key overridden twice."""
    taken = {override_key(o) for o in extra}
    return [o for o in base if override_key(o) not in taken] + list(extra)


def parse_params(node: Any, cls: type) -> Any:
    """The `experiment:` node as a `cls` dataclass: unknown keys and wrong types fail with OmegaConf's message."""
    if node is None:
        raise ValueError(
            f"no `experiment:` parameters in the config; compose with +experiment=<name> ({cls.__name__})"
        )
    if OmegaConf.is_config(node):  # resolve against the whole config (e.g. `out` uses ${model.name})
        node = OmegaConf.to_container(node, resolve=True)
    merged = OmegaConf.merge(OmegaConf.structured(cls), node)
    return OmegaConf.to_object(merged)


@dataclass
class Experiment:
    """One experiment invocation: its config, the user's overrides, its parameters, where it writes."""

    name: str
    cfg: DictConfig
    overrides: list[str]
    params: Any
    out: Path
    device: torch.device
    runs: list[str] = field(default_factory=list)  # training run folders used (recorded in provenance.json)
    presets: list[str] = field(default_factory=list)  # the config groups it was composed with (presets_of)

    @property
    def base_model(self) -> str:
        return model_id(self.cfg.model)

    @property
    def resolution(self) -> int:
        return self.cfg.sample.resolution or self.cfg.model.resolution


def presets_of(name: str, cfg: DictConfig) -> list[str]:
    """`+experiment=<name>`, and the model's own settings for it when the model has some:
    conf/model_experiment/<model>_<name>.yaml (e.g. the world's subjects and prompts in its grammar). Hydra cannot
    choose that file from inside the experiment's preset (a nested defaults list sees no `model` choice)."""
    model_preset = f"{cfg.model.name}_{name}"
    if (CONF / "model_experiment" / f"{model_preset}.yaml").is_file():
        return [f"+experiment={name}", f"+model_experiment={model_preset}"]
    return [f"+experiment={name}"]


def load_experiment(name: str, params_cls: type, argv: Sequence[str]) -> Experiment:
    """Compose `+experiment=<name>` (and the model's preset for it) with `argv` (Hydra override strings),
    validate, parse the parameters."""
    overrides = list(argv)
    presets = presets_of(name, compose([f"+experiment={name}", *overrides]))
    cfg = compose([*presets, *overrides])
    validate(cfg)
    params = parse_params(cfg.experiment, params_cls)
    out = Path(params.out)
    return Experiment(name, cfg, overrides, params, out, resolve_device(cfg.device), presets=presets)


def train(exp: Experiment, *run_overrides: str, preset: str | None = "self") -> Path:
    """Train (or reuse) one run through the harness; returns its run folder.

    `preset="self"` composes with the experiment's own preset (its run-folder layout and training settings);
    another name uses that preset (e.g. `table1`, to share Table 1's run folders); None uses none. The user's
    overrides apply too, except the keys this run sets itself.
    """
    user = exp.overrides
    head = []
    if preset == "self":
        head = exp.presets or [f"+experiment={exp.name}"]
    else:  # another preset has no `experiment:` node to receive experiment.* overrides
        user = [o for o in user if not override_key(o).startswith("experiment.")]
        head = [f"+experiment={preset}"] if preset else []
    cfg = compose([*head, *merge_overrides(user, run_overrides)])
    log.info("training run %s (%s)", cfg.run_dir, " ".join(run_overrides))
    metrics = execute(cfg)  # refuses a folder holding a run made with other settings (para.run.folder)
    if metrics.get("status") != "finished":
        raise RuntimeError(f"training run {cfg.run_dir} ended with status {metrics.get('status')!r}")
    run_dir = Path(cfg.run_dir)
    exp.runs.append(str(run_dir))
    return run_dir


def run_config(run_dir: Path) -> DictConfig:
    return OmegaConf.load(run_dir / "config.yaml")


def method_of(run_dir: Path) -> Method:
    """The (unattached) method of a finished run, rebuilt from its saved config."""
    cfg = run_config(run_dir)
    return METHODS[cfg.method.name](cfg.method, model_id(cfg.model))


def adapter_path(run_dir: Path) -> Path:
    return run_dir / "adapter.safetensors"


def fresh_pipeline(exp: Experiment):
    """The base pipeline, as every run starts from it (for SDXL: read from disk again, never a shared copy)."""
    return load_pipeline(exp.cfg.model, exp.device)


def with_adapter(exp: Experiment, run_dir: Path):
    """A fresh pipeline with a run's adapter loaded through the method's own `load_file`, in sampling form."""
    pipe = fresh_pipeline(exp)
    method = method_of(run_dir)
    method.attach(pipe.unet)
    method.load_file(pipe.unet, adapter_path(run_dir))
    method.prepare_for_sampling(pipe.unet, merge=exp.cfg.sample.merge)
    return pipe


def sample(exp: Experiment, pipe, specs: list[PromptSpec], folder: Path) -> Path:
    """Images of `specs` into `folder` with the run's sampling settings; per-(prompt, image) seeds (paired)."""
    sc = exp.cfg.sample
    return generate(
        pipe,
        specs,
        folder,
        seed=exp.cfg.seed,
        images_per_prompt=sc.images_per_prompt,
        steps=sc.steps,
        guidance=sc.guidance,
        resolution=exp.resolution,
        batch_size=sc.batch_size,
        scheduler=sc.scheduler,
        progress=sys.stderr.isatty(),
    )


def samples_done(exp: Experiment, specs: list[PromptSpec], folder: Path) -> bool:
    """Every image of `specs` is already in `folder` (so no pipeline needs loading to finish it)."""
    n = exp.cfg.sample.images_per_prompt
    names = [image_name(s.index, i) for s in specs for i in range(n)]
    return (folder / "prompts.json").is_file() and all((folder / name).is_file() for name in names)


def sample_condition(
    exp: Experiment, specs: list[PromptSpec], folder: Path, fingerprint: dict[str, Any], build: Callable[[Path], Any]
) -> Path:
    """`folder/samples` for one experimental condition; `build(folder)` returns its ready pipeline.

    The folder is emptied when its fingerprint changed (another adapter, prompt or sampler setting), and
    `build` is only called when images are missing, so a finished condition costs no model loading.
    """
    from experiments.report import reset_if_changed

    reset_if_changed(folder, fingerprint)
    samples = folder / "samples"
    if not samples_done(exp, specs, samples):
        log.info("sampling %s", folder)
        sample(exp, build(folder), specs, samples)
    return samples


def sample_loras(exp: Experiment, lora_files: list[Path], scale: float, specs: list[PromptSpec], folder: Path) -> Path:
    """Samples with LoRA files loaded through diffusers/peft (`load_lora_weights`), all active at `scale`."""
    from experiments.report import file_digest, sampling_fingerprint

    fingerprint = sampling_fingerprint(exp, specs, scale=scale, adapters=[file_digest(f) for f in lora_files])

    def build(_folder: Path):
        pipe = fresh_pipeline(exp)
        names = [f"lora{i}" for i in range(len(lora_files))]
        for name, path in zip(names, lora_files, strict=True):
            pipe.load_lora_weights(str(path), adapter_name=name)
        pipe.set_adapters(names, adapter_weights=[scale] * len(names))
        return pipe

    return sample_condition(exp, specs, folder, fingerprint, build)


def subject_info(name: str) -> DictConfig:
    """`conf/subject/<name>.yaml` (class word, kind); an unknown name fails listing the known ones."""
    path = CONF / "subject" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF / "subject").glob("*.yaml"))
        raise ValueError(f"unknown subject {name!r}; expected one of {known}")
    node = OmegaConf.load(path)
    # a subject with photos of its own (the world's) is a global package: `subject:` beside its `data:`
    return node.subject if "subject" in node else node


def limit(specs: list[PromptSpec], num_prompts: int | None) -> list[PromptSpec]:
    """The first `sample.num_prompts` prompts (all when null), as for a training run's samples."""
    return specs[:num_prompts] if num_prompts else specs


def multi_subject_prompts(
    templates: Sequence[str], subjects: Sequence[str], tokens: Sequence[str]
) -> list[PromptSpec]:
    """Prompts naming several subjects: `{}` i is filled with "<token i> <class word i>".

    The clean prompt (CLIP-T) names the class words only, as DreamBench removes the identifier.
    """
    if len(tokens) != len(subjects):
        raise ValueError(f"{len(subjects)} subjects but {len(tokens)} tokens; give one token per subject")
    classes = [subject_info(s).class_word for s in subjects]
    specs = []
    for i, template in enumerate(templates):
        if template.count("{}") != len(subjects):
            raise ValueError(
                f"prompt {template!r} has {template.count('{}')} '{{}}' slots for {len(subjects)} subjects"
            )
        with_tokens = template.format(*(f"{t} {c}" for t, c in zip(tokens, classes, strict=True)))
        specs.append(PromptSpec(i, with_tokens, template.format(*classes)))
    return specs


def main_entry(run: Any) -> None:
    """`python -m experiments.<name> [hydra overrides]`: logging, then `run(argv)`; user errors without traceback."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from para.core.data import DataError
    from para.core.lock import FolderBusy
    from para.core.method import AdapterFileError
    from para.core.models import ModelLoadError

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s", datefmt="%H:%M:%S")
    from para.core.interrupts import RunInterrupted

    user_errors = (ModelLoadError, DataError, AdapterFileError, FolderBusy, ValueError)
    try:
        run(sys.argv[1:])
    except RunInterrupted as stop:  # SIGTERM or Ctrl-C mid-training: the run keeps its checkpoint
        log.warning("stopped by %s; re-run the same command to continue", stop.signal_name)
        sys.exit(stop.exit_code)
    except (*user_errors, HydraException, OmegaConfBaseException) as err:
        log.error("%s", err)
        sys.exit(2)
