"""The resource plan: will a run fit the card and the disk? Counted on the real architecture before anything loads.

    python -m para.run.plan [--cards 24 40 80] [--resolution 1024] [--out runs/plan] [overrides…]   # `make plan`

For every method (SDXL 1.0, Table 1's settings, a CUDA card): resident weights, trainable parameters,
gradients, optimizer state, activations (counted under CUDA's autocast rules, `para.run.plan_count`), the peak of
each phase (encoding the photos, training, sampling in the method's sampling form, scoring with the evaluation
nets beside SDXL, `para.run.plan_eval`) against the cards as torch reports them (`CARDS`: a "40 GB" A100 has
39.6 GiB), the host RAM of a run on a card (loading, and a checkpoint's tensors copied out to be written),
checkpoint size × how many are kept, and the disk of one Table 1 cell and of the whole table → a table on screen
and `runs/plan/plan.{json,md}`.

`check(cfg)` is the same plan for one run on its own device (`plan.gpu_memory_gb`, or the card's free memory: a
shared card's budget is what is free on it; on a CPU the available RAM) and the free disk of its run folder.
Every run's preflight (para.run.checks `memory` and `disk`) refuses, before anything loads, a run that cannot fit,
naming the options that would (`fitting_options`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from para.core.checkpoint import interval_for_size
from para.core.io import write_results
from para.core.memory import MEMINFO, current_mb, proc_kib
from para.core.models import resolve_device, resolve_dtype
from para.core.sdxl_architecture import architecture_of
from para.core.trainer import autocast_dtype
from para.run.config import compose_config
from para.run.plan_count import Setting, cached_counts
from para.run.plan_eval import cached_eval_counts
from para.run.plan_table import CARDS, markdown, table1_disk_gb
from para.run.registry import METHODS

log = logging.getLogger(__name__)
GIB = 2**30
CUDA, CPU = torch.device("cuda"), torch.device("cpu")
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
DTYPE_ITEMSIZE = {name: dtype.itemsize for dtype, name in DTYPE_NAMES.items()}

# Changes that lower memory, least intrusive first; `fitting_options` tries them (when none fits alone: pairs).
OPTIONS: list[tuple[str, Any]] = [
    ("train.gradient_checkpointing", True),
    ("train.optimizer", "adafactor"),
    ("train.optimizer", "adamw8bit"),
    ("sample.batch_size", 1),
    ("train.mixed_precision", "bf16"),
    ("model.weights_dtype", "bf16"),
    ("model.resolution", 768),
    ("model.resolution", 512),
]


def setting_of(cfg: DictConfig, device: torch.device) -> Setting:
    """What memory depends on in `cfg`, with `auto` resolved for `device`."""
    amp = autocast_dtype(cfg.train.mixed_precision, device)
    return Setting(
        architecture=architecture_of(cfg.model)[0],
        device=device.type,
        method=cfg.method.name,
        method_cfg=json.dumps(OmegaConf.to_container(cfg.method, resolve=True), sort_keys=True),
        weights_dtype=DTYPE_NAMES[resolve_dtype(cfg.model.weights_dtype, device)],
        autocast=DTYPE_NAMES[amp] if amp else None,
        resolution=cfg.model.resolution,
        batch_size=cfg.train.batch_size,
        gradient_checkpointing=bool(cfg.train.gradient_checkpointing),
        prior=cfg.train.prior_loss_weight > 0,
        sample_resolution=cfg.sample.resolution or cfg.model.resolution,
        sample_batch_size=cfg.sample.batch_size,
        sample_merge=bool(cfg.sample.merge),
    )


def checkpoints_written(cfg: DictConfig, checkpoint_bytes: int) -> int:
    """The trainer saves at every multiple of `checkpoint_every` before the last step (null: the interval the
    trainer picks for checkpoints of this size)."""
    every = cfg.train.checkpoint_every
    every = interval_for_size(checkpoint_bytes) if every is None else every
    return (cfg.steps - 1) // every if every else 0


def disk(cfg: DictConfig, counts) -> dict[str, float]:
    """Bytes a run writes: adapter, samples (raw RGB size: an upper bound for PNG), checkpoints."""
    checkpoint = counts.checkpoint_trainable + counts.optimizer_state[cfg.train.optimizer]
    written, keep = checkpoints_written(cfg, checkpoint), cfg.train.keep_checkpoints
    kept = written if keep <= 0 else min(written, keep)
    at_once = written if keep <= 0 else min(written, keep + 1)  # a new one is complete before old ones go
    prompts = cfg.sample.num_prompts or (len(cfg.subject.prompts) if cfg.subject.get("prompts") else 25)
    side = cfg.sample.resolution or cfg.model.resolution
    samples = prompts * cfg.sample.images_per_prompt * side * side * 3 if cfg.sample.enabled else 0
    end = counts.adapter_file + samples
    return {
        "adapter_gb": counts.adapter_file / GIB,
        "checkpoint_gb": checkpoint / GIB,
        "checkpoints_kept": kept,
        "samples_gb": samples / GIB,
        "disk_peak_gb": max(at_once * checkpoint, end + kept * checkpoint) / GIB,
        "disk_after_gb": end / GIB,  # checkpoints removed once the adapter is saved
        "disk_after_with_checkpoints_gb": (end + kept * checkpoint) / GIB,
    }


def runtime_bytes(device: torch.device, reserve_gb: float) -> int:
    """Memory a run uses besides its tensors: on a GPU the reserve (CUDA context, fragmentation; a reading),
    on a CPU this process's resident set now (Python, torch, diffusers … before the model loads)."""
    if device.type == "cuda":
        return int(reserve_gb * GIB)
    return int((current_mb(device) or 0.0) * 2**20)


def load_bytes(cfg: DictConfig, components: dict[str, int], weights_dtype: str) -> int:
    """Host RAM at the end of loading: the loaded weights plus the largest component's file tensors, read at the
    file's precision (fp16 for `model.variant=fp16`, else fp32) and alive beside their converted copy until that
    component is in place (`make rehearsal` measured this: the process peak is at loading on a CPU)."""
    itemsize = DTYPE_ITEMSIZE[weights_dtype]
    file_itemsize = 2 if cfg.model.variant in ("fp16", "bf16") else 4
    return sum(components.values()) + max(components.values()) * file_itemsize // itemsize


def parked_while_training(cfg: DictConfig, components: dict[str, int], device: torch.device) -> int:
    """Bytes of the frozen parts the trainer parks on the CPU while training (para.core.residency): the VAE and
    the text encoders, when their outputs are cached and the text encoders do not train. Nothing on a CPU run."""
    trains_text = bool(OmegaConf.select(cfg, "method.train_text_encoder", default=False))
    if device.type == "cpu" or not cfg.train.cache_latents or trains_text:
        return 0
    return sum(components[name] for name in ("vae", "text_encoder", "text_encoder_2"))


def host_bytes(cfg: DictConfig, counts, weights_dtype: str, device: torch.device) -> int:
    """Host RAM of a run on a card, its tensors: loading (the files are read and converted in host RAM before the
    components move to the card), or, while training, the parts parked on the CPU plus a checkpoint being written
    (`save_checkpoint` copies the method's tensors to the host, then the optimizer's: DreamBooth with AdamW holds
    its 19 GiB of moments there)."""
    checkpoint = max(counts.checkpoint_trainable, counts.optimizer_state[cfg.train.optimizer])
    training = parked_while_training(cfg, counts.components, device) + checkpoint
    return max(load_bytes(cfg, counts.components, weights_dtype), training)


def scores_here(cfg: DictConfig, device: torch.device) -> bool:
    """Whether the run scores its samples, with the evaluation nets on the run's own device (`eval.device`)."""
    if not (cfg.sample.enabled and cfg.eval.enabled):
        return False
    where = cfg.eval.device
    return where == device.type or where.startswith(f"{device.type}:") or (where == "auto" and device.type == "cuda")


def estimate(cfg: DictConfig, device: torch.device | None = None) -> dict[str, Any]:
    """The plan of one run on `device` (default: the run's own) as a flat record (sizes in GiB)."""
    device = device or resolve_device(cfg.device)
    setting = setting_of(cfg, device)
    counts, sampling = cached_counts(setting, cfg, cfg.plan.cache_dir)
    optimizer = cfg.train.optimizer
    phases = {
        "encode": sampling.encode_peak,
        "train": counts.train_peak(optimizer) - parked_while_training(cfg, counts.components, device),
        # after training: the weights `end_training` leaves (DreamBooth's master cast down), in the sampling form
        "sample": sampling.resident_change + max(sampling.sample_peak, sampling.decode_peak),
    }
    evaluation = cached_eval_counts(cfg.eval, cfg.plan.cache_dir) if scores_here(cfg, device) else None
    if evaluation:  # scoring: SDXL is still there, and the evaluation nets beside it
        phases["eval"] = sampling.resident_change + evaluation.weights + evaluation.peak
    if device.type == "cpu":  # on a GPU loading happens in host RAM, not on the card
        phases["load"] = load_bytes(cfg, counts.components, setting.weights_dtype) - counts.resident
    phase = max(phases, key=phases.get)
    runtime = runtime_bytes(device, cfg.plan.reserve_gb)
    host = None
    if device.type == "cuda":
        host = host_bytes(cfg, counts, setting.weights_dtype, device)
    return {
        "method": cfg.method.name,
        "device": device.type,
        "architecture": setting.architecture,
        "note": architecture_of(cfg.model)[1],
        "resolution": setting.resolution,
        "weights_dtype": setting.weights_dtype,
        "autocast": setting.autocast,
        "optimizer": optimizer,
        "gradient_checkpointing": setting.gradient_checkpointing,
        "trainable_params": counts.trainable_params,
        "weights_gb": counts.resident / GIB,
        "components_gb": {k: v / GIB for k, v in counts.components.items()},
        "gradients_gb": counts.gradients / GIB,
        "optimizer_gb": counts.optimizer_state[optimizer] / GIB,
        "activations_gb": counts.activations / GIB,
        "sampling_form_gb": sampling.sampling_form / GIB,
        "eval_nets_gb": evaluation.weights / GIB if evaluation else 0.0,
        **{f"{name}_peak_gb": (counts.resident + value) / GIB for name, value in phases.items()},
        "peak_gb": (counts.resident + phases[phase]) / GIB,
        "peak_phase": phase,
        "runtime_gb": runtime / GIB,
        "total_gb": (counts.resident + phases[phase] + runtime) / GIB,
        "host_gb": host / GIB if host is not None else None,
        **disk(cfg, counts),
    }


def with_changes(cfg: DictConfig, changes: list[tuple[str, Any]]) -> DictConfig:
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for key, value in changes:
        OmegaConf.update(cfg, key, value)
    return cfg


def _is_current(cfg: DictConfig, key: str, value: Any, device: torch.device) -> bool:
    current = OmegaConf.select(cfg, key)
    if key == "train.mixed_precision":
        return autocast_dtype(current, device) is not None  # already mixed precision: nothing to gain
    if key == "model.weights_dtype":
        return resolve_dtype(current, device).itemsize <= 2
    if key == "model.resolution":
        return current <= value
    return current == value


# What an option changes besides memory, said where a refusal names it (a run that takes one records it).
OPTION_NOTES = {
    "train.gradient_checkpointing=true": "the same training, activations recomputed: slower",
    "train.optimizer=adafactor": "Adafactor instead of AdamW: another optimizer, recorded in metrics.json and tables",
    "train.optimizer=adamw8bit": "AdamW with 8-bit moments, recorded likewise",
}


def option_note(option: str) -> str:
    """`option` (one change, or several separated by spaces) with what it changes, and what it needs installed
    (8-bit AdamW: the `gpu` extra)."""
    from para.core.trainer import missing_optimizer_package

    notes = []
    for change in option.split():
        notes.append(OPTION_NOTES.get(change))
        if change.startswith("train.optimizer="):
            notes.append(missing_optimizer_package(change.split("=", 1)[1]))
    notes = [n for n in notes if n]
    return f"{option} ({'; '.join(notes)})" if notes else option


def fitting_options(cfg: DictConfig, device: torch.device, budget_gb: float, limit: int = 4) -> list[str]:
    """Up to `limit` changes from OPTIONS with which the run's total fits `budget_gb`: single changes, or, when
    none fits alone, pairs of the first five."""
    single = [[o] for o in OPTIONS if not _is_current(cfg, *o, device)]
    pairs = [a + b for i, a in enumerate(single[:5]) for b in single[i + 1 : 5] if a[0][0] != b[0][0]]
    found = _fitting(cfg, device, budget_gb, single, limit) or _fitting(cfg, device, budget_gb, pairs, limit)
    return [" ".join(f"{k}={str(v).lower()}" for k, v in changes) for changes in found]


def _fitting(cfg: DictConfig, device: torch.device, budget_gb: float, candidates: list, limit: int) -> list:
    found = []
    for changes in candidates:
        try:
            fits = estimate(with_changes(cfg, changes), device)["total_gb"] <= budget_gb
        except Exception as err:  # noqa: BLE001 - a combination the trainer itself cannot run is no option
            log.info("plan: %s not counted (%s: %s)", changes, type(err).__name__, str(err)[:200])
            continue
        if fits:
            found.append(changes)
        if len(found) == limit:
            break
    return found


def memory_budget_gb(cfg: DictConfig, device: torch.device) -> tuple[float, str] | None:
    """(GiB the run may use in total, what it is): the card's free memory (on a shared card, what the other
    processes leave; with what this process's allocator already holds), or on a CPU the RAM available now + this
    process. None for a card this machine does not have (the preflight's `device` check names that) and no
    `plan.gpu_memory_gb` to plan for."""
    if device.type == "cuda":
        if cfg.plan.gpu_memory_gb is not None:
            return cfg.plan.gpu_memory_gb, "plan.gpu_memory_gb"
        if not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count():
            return None
        free, total = torch.cuda.mem_get_info(device)
        budget = (free + torch.cuda.memory_reserved(device)) / GIB
        return budget, f"{torch.cuda.get_device_name(device)} ({free / GIB:.1f} of its {total / GIB:.1f} GiB free)"
    return ram_budget_gb(), "RAM available"


def ram_budget_gb() -> float:
    """The host RAM available now plus what this process already holds (GiB); inf where /proc says nothing."""
    available = proc_kib(MEMINFO, "MemAvailable")
    return float("inf") if available is None else (available * 1024 + runtime_bytes(CPU, 0)) / GIB


def host_problem(record: dict[str, Any]) -> str | None:
    """Why a run on a card cannot fit the host's RAM (loading, checkpoints written through it) on top of what
    this process holds now; or None."""
    host, budget = record.get("host_gb"), ram_budget_gb() - runtime_bytes(CPU, 0) / GIB
    if host is None or host <= budget:
        return None
    return (
        f"{record['method']} needs ~{host:.1f} GiB of host RAM besides the card (loading the weights, writing a "
        f"{record['checkpoint_gb']:.1f} GiB checkpoint through the host), {budget:.1f} GiB are available: free host "
        "RAM, use a machine with more, or an optimizer with less state (train.optimizer=adafactor)"
    )


def memory_problem(cfg: DictConfig, record: dict[str, Any]) -> str | None:
    """Why the run of plan `record` cannot fit its device's memory, naming the options that would; or None."""
    device = resolve_device(cfg.device)
    found = memory_budget_gb(cfg, device)
    if found is None or record["total_gb"] <= found[0]:
        return None
    budget, what = found
    options = fitting_options(cfg, device, budget)
    bigger = "a larger card" if device.type == "cuda" else "a machine with more free RAM"
    ways = "; ".join(map(option_note, options)) if options else f"none of the plan's options; use {bigger}"
    return (
        f"{cfg.method.name} needs ~{record['total_gb']:.1f} GiB of {device.type} memory at its peak "
        f"({record['peak_phase']}), {what} has {budget:.1f} GiB. Options that fit: {ways}"
    )


def disk_problem(record: dict[str, Any], folder: Path, free_gb: float) -> str | None:
    """Why the run of plan `record` cannot fit the `free_gb` of the disk of its run folder `folder`; or None."""
    if record["disk_peak_gb"] <= free_gb:
        return None
    return (
        f"the run writes up to {record['disk_peak_gb']:.1f} GiB (checkpoints {record['checkpoint_gb']:.2f} GiB "
        f"each), {folder} has {free_gb:.1f} GiB free: free space, lower train.keep_checkpoints or "
        "train.checkpoint_every=0, or put the run on a bigger disk (hydra.run.dir=...)"
    )


def existing_parent(path: Path) -> Path:
    """`path`, or its nearest parent that exists (where a run folder not made yet will be)."""
    path = Path(path).absolute()
    return next(p for p in (path, *path.parents) if p.exists())


def check(cfg: DictConfig, run_dir: Path | None = None) -> list[str]:
    """Problems that stop `cfg` from fitting its device or disk (empty when it fits), each naming the way out.
    Runs check this in their preflight (para.run.checks: `memory`, `disk`)."""
    record = estimate(cfg)
    folder = existing_parent(Path(run_dir or cfg.run_dir))
    free = shutil.disk_usage(folder).free / GIB
    found = [memory_problem(cfg, record), host_problem(record), disk_problem(record, folder, free)]
    return [p for p in found if p]


# --- `make plan` ----------------------------------------------------------------------------------------
# DreamBooth's memory options (docs/methods.md "DreamBooth" shows this table, as `make plan` prints it)
DREAMBOOTH_OPTIONS = {
    "AdamW": [("train.optimizer", "adamw"), ("train.gradient_checkpointing", False)],
    "AdamW + checkpointing": [("train.optimizer", "adamw"), ("train.gradient_checkpointing", True)],
    "8-bit AdamW + checkpointing": [("train.optimizer", "adamw8bit"), ("train.gradient_checkpointing", True)],
    "Adafactor + checkpointing": [("train.optimizer", "adafactor"), ("train.gradient_checkpointing", True)],
}


def table1_config(method: str, model: str, resolution: int | None, overrides=(), changes=()) -> DictConfig:
    """A Table 1 cell's config (`+experiment=table1`) for `method` on `model` (at `resolution`, if given)."""
    size = [f"model.resolution={resolution}"] if resolution is not None else []  # 0 is a value, refused
    cfg = compose_config(
        "+experiment=table1", f"method={method}", f"model={model}", "run_dir=unused", *size, *overrides
    )
    return with_changes(cfg, list(changes)) if changes else cfg  # as composed: typed, so unknown keys show


def _options(cfg) -> str:
    tc = cfg.train
    return f"{tc.optimizer}{', checkpointing' if tc.gradient_checkpointing else ''}"


def _row(label: str, options: str, plan: dict, cards: list[float]) -> dict:
    return {
        "method": label,
        "options": options,
        **plan,
        **{f"fits_{card:g}": plan["total_gb"] <= card for card in cards},
    }


class MethodDoesNotFit(ValueError):
    """A method whose settings the model's layers cannot take: nothing to count."""


def rows(cards: list[float], model: str, resolution: int | None, methods: list[str] | None, overrides) -> list[dict]:
    records = []
    for name in methods or list(METHODS):
        cfg = table1_config(name, model, resolution, overrides)
        try:
            plan = estimate(cfg, CUDA)
        except ValueError as err:  # the method cannot attach to this model (e.g. a block size, a rank too large)
            raise MethodDoesNotFit(f"method={name} on model={model}: {err}") from err
        record = _row(name, _options(cfg) + " (default)", plan, cards)
        record["fits_with"] = {
            f"{card:g}": fitting_options(cfg, CUDA, card) for card in cards if not record[f"fits_{card:g}"]
        }
        records.append(record)
    if methods is None or "dreambooth" in methods:
        for label, changes in DREAMBOOTH_OPTIONS.items():
            cfg = table1_config("dreambooth", model, resolution, overrides, changes)
            records.append({**_row("dreambooth", label, estimate(cfg, CUDA), cards), "table": "dreambooth"})
    return records


def input_problems(
    cards: list[float], model: str, resolution: int | None, methods: list[str] | None, overrides
) -> list[str]:
    """What is wrong with the plan's arguments, each with the way out (before anything is counted: an unknown
    method or key was a traceback, and --resolution 0 counted for ever)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from para.run.config import compose_error_message, config_problems

    found = [f"--cards {c:g}: a card size is a number of GiB > 0" for c in cards if not 0 < c < float("inf")]
    unknown = [m for m in methods or [] if m not in METHODS]
    if unknown:
        found.append(f"--methods {' '.join(unknown)}: no such method; choose from {', '.join(sorted(METHODS))}")
    # settings outside `method.` are the same for every method: one composition checks them
    per_method = any(o.lstrip("+~").startswith("method.") for o in overrides)
    names = [m for m in methods or (METHODS if per_method else ["para"]) if m in METHODS]
    for name in names:
        try:
            problems = config_problems(table1_config(name, model, resolution, overrides))
        except (HydraException, OmegaConfBaseException) as err:
            problems = [compose_error_message(err)]
        found += [p for p in problems if p not in found]
    return [f"  - {p}" for p in found]


def table1_disk_problem(records: list[dict], out: Path) -> str | None:
    """The whole table's disk (every cell's adapter and samples, plus one cell's checkpoints) against `out`'s disk."""
    need = table1_disk_gb(records)
    folder = out.resolve()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free / GIB
    if need > free:
        return f"Table 1 writes ~{need:.0f} GiB, {folder} has {free:.0f} GiB free"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cards", type=float, nargs="+", default=list(CARDS.values()), help="card sizes in GiB as torch reports them"
    )
    parser.add_argument("--model", default="sdxl", help="conf/model/<name>.yaml (default: sdxl)")
    parser.add_argument("--resolution", type=int, default=None, help="default: the model's (SDXL: 1024)")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    parser.add_argument("--out", default="runs/plan")
    parser.add_argument("--check", action="store_true", help="exit 2 if the whole Table 1 does not fit the disk")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every row, e.g. train.batch_size=2")
    args = parser.parse_args(argv)
    problems = input_problems(args.cards, args.model, args.resolution, args.methods, args.overrides)
    if problems:
        print("\n".join(["make plan / python -m para.run.plan: nothing was counted:", *problems]), file=sys.stderr)
        return 2
    try:
        records = rows(args.cards, args.model, args.resolution, args.methods, args.overrides)
    except MethodDoesNotFit as err:
        print(f"make plan / python -m para.run.plan: nothing was written:\n  - {err}", file=sys.stderr)
        return 2
    resolution = records[0]["resolution"]
    write_results(args.out, "plan", records, markdown(records, args.cards, args.model, resolution))
    problem = table1_disk_problem(records, Path(args.out))
    if problem:
        print(f"WARNING: {problem}")
    return 2 if problem and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
