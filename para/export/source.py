"""What an export starts from: a run folder, or an adapter file of this project, with the facts its files record.

A run folder holds `config.yaml` (how to rebuild the base model; the subject, token and prompt) and
`adapter.safetensors`. A combined PaRa adapter (`experiments/multi_subject.py`) is a file whose metadata names
the PaRa adapter files it combines; their run folders give the base model and the subjects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from para.combine import NAME as COMBINED
from para.core.data import instance_prompt
from para.core.method import AdapterFileError, read_adapter_file
from para.core.models import model_id, resolve_dtype

ADAPTER_FILE = "adapter.safetensors"
CONFIG_FILE = "config.yaml"
EXPORT_FORMAT = "para-export"  # `para_format` of an exported file (a run's own adapter: "para-adapter")


@dataclass
class Subject:
    subject: str
    token: str
    instance_prompt: str


@dataclass
class ExportSource:
    """An adapter file, its tensors and metadata, and the run(s) it came from."""

    adapter: Path
    tensors: dict[str, Tensor]
    metadata: dict[str, str]
    run_dirs: list[Path] = field(default_factory=list)
    model_cfg: DictConfig | None = None  # the base model the runs trained on (None: no run folder found)
    subjects: list[Subject] = field(default_factory=list)

    @property
    def method(self) -> str | None:
        return self.metadata.get("method")

    @property
    def base_model(self) -> str | None:
        return self.metadata.get("base_model")

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.metadata.get("config", "{}"))

    @property
    def run_dir(self) -> Path | None:
        """The run folder of a single-run adapter (None for a combination)."""
        return self.run_dirs[0] if len(self.run_dirs) == 1 and self.method != COMBINED else None


def open_source(path: str | Path) -> ExportSource:
    """A run folder, a folder holding `adapter.safetensors`, or an adapter `.safetensors` file."""
    path = Path(path)
    adapter = path / ADAPTER_FILE if path.is_dir() else path
    if path.is_dir() and not adapter.is_file():
        raise AdapterFileError(f"{path} holds no {ADAPTER_FILE}: is it a finished run folder?")
    tensors, metadata = read_adapter_file(adapter)
    if metadata.get("para_format") == EXPORT_FORMAT:
        raise AdapterFileError(
            f"{adapter} is already an exported {metadata.get('para_export_format')!r} file; export from its run folder"
        )
    source = ExportSource(adapter, tensors, metadata)
    if source.method == COMBINED:
        runs = [Path(p).parent for p in source.config.get("sources", [])]
    else:
        runs = [adapter.parent]
    for run in runs:
        if (run / CONFIG_FILE).is_file():
            _add_run(source, run)
    return source


def _add_run(source: ExportSource, run_dir: Path) -> None:
    try:
        cfg = OmegaConf.load(run_dir / CONFIG_FILE)
        model = model_id(cfg.model)
    except Exception as err:  # noqa: BLE001 - YAML, OmegaConf and key errors alike: the file cannot say
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise AdapterFileError(
            f"{run_dir / CONFIG_FILE} is not a run's config ({type(err).__name__}: {first}); the export reads the "
            "base model from it. Put back the config.yaml the run wrote, or pass a loaded pipeline to "
            "para.export_lora(..., pipe=...)"
        ) from None
    if model != source.base_model:
        raise AdapterFileError(
            f"{run_dir / CONFIG_FILE} names base model {model_id(cfg.model)!r}, but {source.adapter} was made for "
            f"{source.base_model!r}"
        )
    source.run_dirs.append(run_dir)
    source.model_cfg = source.model_cfg or cfg.model
    prompt = instance_prompt(cfg.data.prompt_template, cfg.data.token, cfg.subject.class_word)
    source.subjects.append(Subject(cfg.subject.name, cfg.data.token, prompt))


def trained_dtype(source: ExportSource) -> torch.dtype | None:
    """The dtype the run's base weights had while it trained (its config's `model.weights_dtype` on the device its
    metrics.json names: bf16 for `auto` on a GPU), so an export reads W0 as the run used it; None if unknown."""
    for run_dir in source.run_dirs:
        try:
            device = json.loads((run_dir / "metrics.json").read_text())["meta_info"]["device"]
            return resolve_dtype(source.model_cfg.weights_dtype, torch.device(device))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError):  # no or a partial metrics.json
            continue
    return None


def require_model(source: ExportSource) -> DictConfig:
    """The model config to rebuild the base model with, or a clear error."""
    if source.model_cfg is None:
        raise AdapterFileError(
            f"no run folder ({CONFIG_FILE}) found for {source.adapter}, so the base model "
            f"{source.base_model!r} cannot be rebuilt here; export from the run folder, or pass a loaded pipeline "
            "to para.export_lora(..., pipe=...)"
        )
    return source.model_cfg


def _without_revision(model: str) -> str:
    return model.rsplit("@", 1)[0]


def check_pipeline_base(path: Path | str, file_base: str | None, pipe: Any, base_model: str | None = None) -> None:
    """Refuse an adapter made for another base model than `pipe`'s, naming both (as the harness does).

    `pipe`'s base model is `base_model` when given, else its `name_or_path` (the hub id or folder it was loaded
    from). A revision (`id@rev`) is compared only when both sides name one.
    """
    here = base_model or getattr(pipe, "name_or_path", None)
    if not here:
        raise AdapterFileError(
            f"cannot tell which base model this pipeline is (it has no name_or_path); {path} was made for "
            f"{file_base!r}: pass base_model={file_base!r} if that is the model loaded"
        )
    same = here == file_base if "@" in here and "@" in str(file_base) else None
    if same is None:
        same = _without_revision(here) == _without_revision(str(file_base))
    if not same:
        raise AdapterFileError(
            f"{path} was made for base model {file_base!r}, but the pipeline is {here!r}; "
            "pass base_model=... only if they are the same weights"
        )
