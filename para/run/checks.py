"""The standard checks of a run before it starts (para.run.preflight runs them): each a function of a `Cell`
returning problems, each saying what is wrong and the way out. Nothing here writes to disk.

Checks a table's cells share (the method on the model, the photos of a subject, the weights and backbones) are
remembered between cells; `forget()` drops that (`preflight()` does, so every run looks afresh).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from para.core.devices import device_problem

log = logging.getLogger(__name__)


@dataclass
class Cell:
    """One run to check, and what the checks work out once and share (e.g. the method on the model's UNet)."""

    cfg: DictConfig
    run_dir: Path
    shared: dict[str, Any] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)  # the checks that found problems so far


@dataclass
class Check:
    name: str
    run: Callable[[Cell], Iterable[str]]
    requires: tuple[str, ...] = ()  # checks whose failure makes this one meaningless


STANDARD: list[Check] = []


def standard(name: str, requires: tuple[str, ...] = ()) -> Callable:
    def register(fn: Callable[[Cell], Iterable[str]]) -> Callable[[Cell], Iterable[str]]:
        STANDARD.append(Check(name, fn, requires))
        return fn

    return register


@standard("config")
def config_ranges(cell: Cell) -> Iterable[str]:
    from para.run.config import config_problems

    return config_problems(cell.cfg)


@standard("optimizer", requires=("config",))
def optimizer_installed(cell: Cell) -> Iterable[str]:
    """The optimizer's package is there (8-bit AdamW: bitsandbytes, the `gpu` extra)."""
    from para.core.trainer import missing_optimizer_package

    missing = missing_optimizer_package(cell.cfg.train.optimizer)
    return [f"{missing}; or train.optimizer=adamw (or adafactor)"] if missing else []


@standard("method", requires=("config",))
def method_on_model(cell: Cell) -> Iterable[str]:
    """The method attached to the model's real architecture on the meta device: a layer subset that matches no
    layer, or a rank too large for a layer (method.gamma=null), fails here in a fraction of a second."""
    from para.core.models import model_id
    from para.core.sdxl_architecture import build_unet_meta
    from para.run.registry import METHODS

    cfg = cell.cfg
    key = (OmegaConf.to_yaml(cfg.model, resolve=True), OmegaConf.to_yaml(cfg.method, resolve=True))
    if key not in _ATTACHED:  # the same method on the same model, in many cells of a table: once
        unet = build_unet_meta(cfg.model)
        method = METHODS[cfg.method.name](cfg.method, model_id(cfg.model))
        with torch.random.fork_rng(devices=[]):  # random initial values must not shift the run's own draws
            try:
                _ATTACHED[key] = method.attach(unet)
            except ValueError as err:
                _ATTACHED[key] = f"method {cfg.method.name} on the {cfg.model.name} UNet: {err}"
            else:
                # loud for real models; the random test models' layers are 64-128 wide, capping any rank > 3
                level = logging.WARNING if cfg.model.kind == "pretrained" else logging.INFO
                for note in method.attach_notes():
                    log.log(level, "method %s on the %s UNet: %s", cfg.method.name, cfg.model.name, note)
    if isinstance(_ATTACHED[key], str):
        return [_ATTACHED[key]]
    cell.shared["trainable"] = _ATTACHED[key]  # meta tensors: shapes and dtypes, no memory
    return []


_ATTACHED: dict[tuple[str, str], list | str] = {}


def forget() -> None:
    """Drop what checks remember between cells (`check_cells` shares it across the cells of one table)."""
    _ATTACHED.clear()
    for cached in (weights_problem, _photo_problems, _missing_backbones):
        cached.cache_clear()


def _is_repo_id(path: str) -> bool:
    """Whether `path` can name a hub repository (`owner/name`): `world/assets/model` cannot, it is a folder."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(path)
    except HFValidationError:
        return False
    return True


@functools.cache  # a table's cells share their base model: look (and probe the hub) once
def weights_problem(path: str, revision: str | None = None) -> str | None:
    """Why the weights at `path` (a local file or folder, or a hub id) cannot be loaded here, or None."""
    from eval.hub import offline_reason
    from para.core.models import missing_weights_message

    local = Path(path).expanduser()
    if path.endswith(".ckpt"):
        return f"{path}: .ckpt files are pickles and are not loaded; convert to .safetensors first"
    if local.exists():
        return None
    if path.endswith(".safetensors") or path.startswith(("/", ".", "~")) or not _is_repo_id(path):
        return missing_weights_message(path, [f"{path}: no such file or folder"])
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(path, "model_index.json", revision=revision), str):
        return None
    if isinstance(try_to_load_from_cache(path, "config.json", revision=revision), str):
        return None  # a single model (e.g. model.vae_path)
    reason = offline_reason()
    if reason is None:
        return None  # the hub answers: the weights are downloaded when the run loads them
    return missing_weights_message(path, [f"{path}: not in the local Hugging Face cache, and {reason}"])


@standard("weights", requires=("config",))
def base_weights(cell: Cell) -> Iterable[str]:
    """The base model's weights (and a replacement VAE) are on disk, or the hub can be reached to fetch them."""
    from para.core.models import SDXL_HUB_ID

    model = cell.cfg.model
    if model.kind != "pretrained":
        return []
    found = [weights_problem(model.path or SDXL_HUB_ID, model.revision)]
    if model.vae_path:
        found.append(weights_problem(model.vae_path))
    return [p for p in found if p]


@standard("photos")
def photos(cell: Cell) -> Iterable[str]:
    """Every photo of the subject opens and decodes (training uses them, evaluation compares with all)."""
    from para.core.data import DataError, select_images, subject_photos

    data = cell.cfg.data
    found = list(_photo_problems(str(data.root), cell.cfg.subject.name, data.min_image_side))
    if not found and data.images is not None:
        try:
            select_images(subject_photos(data.root, cell.cfg.subject.name), list(data.images))
        except DataError as err:
            found.append(str(err))
    return found


@functools.cache  # every method of a subject reads the same photos
def _photo_problems(root: str, subject: str, min_side: int) -> tuple[str, ...]:
    from para.core.data import photo_problems

    return tuple(photo_problems(root, subject, min_side))


@functools.cache
def _missing_backbones(opts: Any) -> tuple[str, ...]:
    from eval.score import protocol_named

    return tuple(protocol_named(opts.backbones).missing(opts))


@standard("backbones", requires=("config",))
def eval_backbones(cell: Cell) -> Iterable[str]:
    cfg = cell.cfg
    if not (cfg.sample.enabled and cfg.eval.enabled):
        return []
    from eval.options import EvalOptions

    return list(_missing_backbones(EvalOptions.from_any(cfg.eval)))


@standard("device")
def devices(cell: Cell) -> Iterable[str]:
    cfg = cell.cfg
    found = [device_problem("device", cfg.device)]
    if cfg.sample.enabled and cfg.eval.enabled:
        found.append(device_problem("eval.device", cfg.eval.device))
    return [p for p in found if p]


@standard("gpu", requires=("config",))
def sdxl_on_a_gpu(cell: Cell) -> Iterable[str]:
    """SDXL-sized weights never quietly run on the CPU: `device=auto` found no GPU (a launcher that hid the card,
    a machine without one). Hours per cell in fp32, and not the paper's setup; `device=cpu` asks for it on purpose
    (e.g. `make rehearsal`). The memory and disk checks wait for this one: their plan would count SDXL in fp32
    for a CPU it will not run on (a minute and more of counting for a refusal)."""
    cfg = cell.cfg
    if cfg.device != "auto" or cfg.model.kind != "pretrained" or torch.cuda.is_available():
        return []
    from para.core.sdxl_architecture import is_sdxl_size

    if not is_sdxl_size(cfg.model):
        return []
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    why = f"CUDA_VISIBLE_DEVICES={hidden!r} hides every card" if hidden is not None else "no usable CUDA GPU here"
    return [
        f"model={cfg.model.name} (SDXL's size) would run on the CPU: device=auto found no GPU ({why}; torch "
        f"{torch.__version__}). Run where a GPU is visible (make reproduce-table1 gives every cell one with "
        "LAUNCHER=local, processes or slurm), ask for the CPU on purpose with device=cpu, or use model=tiny"
    ]


def resource_plan(cell: Cell) -> dict[str, Any] | None:
    """The run's resource plan (para.run.plan: memory and disk, counted on the meta device), once per cell; None
    when `plan.check=false`, when the plan cannot count this run (the run itself will tell), or when the weights
    are missing: such a run has no plan to count (counting SDXL's plan cold takes longer than fixing the weights),
    and its refusal names the weights at once."""
    if "resources" not in cell.shared:
        cell.shared["resources"] = None
        if cell.cfg.plan.check and "weights" not in cell.failed:
            from para.run.plan import estimate

            try:
                cell.shared["resources"] = estimate(cell.cfg)
            except Exception as err:  # noqa: BLE001 - a plan that cannot count a run must not stop it
                log.warning(
                    "the resource plan could not count this run (%s: %s); not checked", type(err).__name__, err
                )
    return cell.shared["resources"]


@standard("memory", requires=("config", "method", "gpu"))
def fits_memory(cell: Cell) -> Iterable[str]:
    """The plan's peak fits the card (`plan.gpu_memory_gb` or its free memory) or, on a CPU, the RAM available; a
    run on a card also fits the host's RAM."""
    from para.run.plan import host_problem, memory_problem

    record = resource_plan(cell)
    return [p for p in (memory_problem(cell.cfg, record), host_problem(record)) if p] if record else []


@standard("disk", requires=("config", "method", "gpu"))
def free_disk(cell: Cell) -> Iterable[str]:
    """The run folder can be written, and its disk holds what the plan says the run writes (checkpoints
    included)."""
    from para.run.plan import GIB, disk_problem, existing_parent

    folder = existing_parent(cell.run_dir)
    if not os.access(folder, os.W_OK | os.X_OK):
        return [f"cannot write into {folder} (permissions); put the run where you can write (hydra.run.dir=...)"]
    record = resource_plan(cell)
    problem = record and disk_problem(record, folder, shutil.disk_usage(folder).free / GIB)
    return [problem] if problem else []


@standard("folder", requires=("config",))
def run_folder(cell: Cell) -> Iterable[str]:
    """What the run folder holds allows this run (checked again under the folder's lock when it starts)."""
    from para.run.folder import FolderRefused, plan

    try:
        cell.shared["plan"] = plan(cell.run_dir, cell.cfg)
    except FolderRefused as err:
        return [str(err)]
    return []
