"""Run folders: which are ours, what they hold, and what a run may do with one.

A run folder is recognised as the harness's by the marker `.para-run` it writes first (or, for folders made
before the marker existed, a `metrics.json` with `run_info`). The harness removes only the entries it writes
(`OWNED`) and only in a folder it recognises; a non-empty folder it does not recognise is refused, whatever
`overwrite` says, naming the folder and what is in it.

What a run does with a folder (`plan`), decided while it holds the folder's lock (para.core.lock):

| the folder holds                           | same settings                  | other settings                  |
|--------------------------------------------|--------------------------------|---------------------------------|
| nothing, or only entries without work      | a fresh run                    | a fresh run                     |
| an unfinished run (checkpoints, adapter,   | continued (`resume`, default   | refused, naming the keys        |
| samples)                                   | true; resume=false refuses)    |                                 |
| a finished run                             | kept; the stages asked for but | refused, naming the keys        |
|                                            | missing are added (samples,    |                                 |
|                                            | scores)                        |                                 |
| anything of ours, with overwrite=true      | our entries removed, fresh run | our entries removed, fresh run  |

"Same settings" compares what defines the folder's contents (para.run.settings): training settings when it
holds checkpoints or an adapter, sampling settings when it holds samples that are asked for again, scoring
settings when it holds scores that are asked for again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from para.core.io import atomic_write_json, read_json
from para.core.lock import LOCK_NAME
from para.core.method import safetensors_problem
from para.run.settings import SAMPLING, SCORING, TRAINING, describe, differing, saved_config

log = logging.getLogger(__name__)

MARKER = ".para-run"
# The model card's name, and the one it takes when a file of the user's already has that name (para.run.model_card).
CARD_NAMES = ("README.md", "MODEL_CARD.md")
CARD_MARK = "<!-- written by the para harness"  # in every card we write: how a README.md is told to be ours
MARKER_FORMAT = "para-run-folder"
# Every entry the harness writes into a run folder: the only ones it ever removes (overwrite=true). A module that
# writes a new entry adds its name here.
OWNED = (
    MARKER,
    LOCK_NAME,
    "config.yaml",
    "metrics.json",
    "log.jsonl",
    "adapter.safetensors",
    "checkpoints",
    "samples",
    "validation",
    "wandb",
    CARD_NAMES[1],  # README.md is ours only when it is our model card (is_our_card)
)


def run_dir_of(cfg: DictConfig) -> Path:
    """Hydra's output folder when launched through Hydra (honours hydra.run.dir), else cfg.run_dir."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.run_dir)


# Entries of OWNED that the harness writes as folders; the others are files. An entry of the other kind is not the
# harness's (a `.para-lock` folder, a `samples` file): it is refused, never removed.
OWNED_FOLDERS = ("checkpoints", "samples", "validation", "wandb")


class FolderRefused(ValueError):
    """The run folder cannot be used as asked; the message names it, why, and the ways out."""


@dataclass
class Contents:
    """What a folder holds, as far as a run is concerned."""

    kind: str  # missing | empty | ours | foreign
    entries: list[str] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    checkpoint: int | None = None  # newest checkpoint step
    adapter: bool = False
    samples: int = 0  # images in samples/
    sampled: bool = False  # samples/prompts.json written: sampling finished
    adapter_problem: str | None = None  # why adapter.safetensors cannot be read (truncated, not safetensors)

    @property
    def work(self) -> bool:
        """Anything paid for: throwing it away needs overwrite=true."""
        return self.checkpoint is not None or self.adapter or self.samples > 0

    @property
    def status(self) -> str | None:
        return (self.metrics or {}).get("status")


def _read_metrics(run_dir: Path) -> dict[str, Any] | None:
    try:
        metrics = read_json(run_dir / "metrics.json")
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def _is_ours(run_dir: Path, metrics: dict | None) -> bool:
    try:
        marker = json.loads((run_dir / MARKER).read_text())
        if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT:
            return True
    except (OSError, ValueError):
        pass
    return metrics is not None and "run_info" in metrics and "status" in metrics  # made before the marker


def inspect(run_dir: Path) -> Contents:
    """What `run_dir` holds (read only)."""
    if not run_dir.exists():
        return Contents("missing")
    if not run_dir.is_dir():
        return Contents("foreign", [run_dir.name])
    entries = sorted(os.listdir(run_dir))
    misfits = wrong_kind(run_dir, entries)
    if misfits:
        return Contents("foreign", misfits)
    if set(entries) <= {LOCK_NAME}:
        return Contents("empty", entries)
    metrics = _read_metrics(run_dir)
    if not _is_ours(run_dir, metrics):
        return Contents("foreign", entries)
    steps = [int(p.name[4:]) for p in (run_dir / "checkpoints").glob("step*") if p.name[4:].isdigit()]
    samples = run_dir / "samples"
    adapter = run_dir / "adapter.safetensors"
    return Contents(
        "ours",
        entries,
        metrics,
        checkpoint=max(steps) if steps else None,
        adapter=adapter.is_file(),
        samples=len(list(samples.glob("*.png"))) if samples.is_dir() else 0,
        sampled=(samples / "prompts.json").is_file(),
        adapter_problem=safetensors_problem(adapter) if adapter.is_file() else None,
    )


def wrong_kind(run_dir: Path, entries: list[str]) -> list[str]:
    """Entries named like the harness's own but of the other kind (a folder `.para-lock` or `metrics.json`, a file
    `samples`): someone else's, so the harness can neither write there nor remove them."""
    misfits = []
    for name in set(entries) & set(OWNED):
        path = run_dir / name
        folder = path.is_dir() and not path.is_symlink()
        if folder != (name in OWNED_FOLDERS):
            misfits.append(f"{name} ({'a folder' if folder else 'not a folder'})")
    return sorted(misfits)


def not_ours_message(run_dir: Path, entries: list[str]) -> str:
    if any(e.endswith(("(a folder)", "(not a folder)")) for e in entries):
        return (
            f"{run_dir} holds {', '.join(entries)} where the harness writes "
            f"{'files' if all(e.endswith('(a folder)') for e in entries) else 'entries of the other kind'} of the "
            "same names; nothing in it was touched. Move them away if they are yours (or remove a stale one), or "
            "give the run another folder (hydra.run.dir=...)"
        )
    listed = ", ".join(entries[:6]) + (f", ... ({len(entries)} entries)" if len(entries) > 6 else "")
    return (
        f"{run_dir} is not empty and is not a run folder of this harness (it holds {listed}); nothing in it was "
        "touched. Give the run a new or empty folder (hydra.run.dir=...; the default is "
        "runs/<method>/<subject>/steps<N>-seed<k>). overwrite=true only replaces folders the harness made "
        f"(they hold {MARKER})"
    )


@dataclass
class Plan:
    """What a run does with its folder: fresh | continue | score | skip."""

    action: str
    contents: Contents
    clear: bool = False  # remove our entries first
    note: str = ""

    @property
    def metrics(self) -> dict[str, Any] | None:
        return self.contents.metrics


def _stage_groups(contents: Contents, cfg: DictConfig) -> tuple[str, ...]:
    """The setting groups that define what the folder holds and the request would reuse."""
    groups = TRAINING
    if contents.samples and cfg.sample.enabled:
        groups += SAMPLING
    if "scores" in (contents.metrics or {}) and cfg.sample.enabled and cfg.eval.enabled:
        groups += SCORING
    return groups


def _held(contents: Contents) -> str:
    parts = [f"status {contents.status or 'unknown'}"]
    if contents.checkpoint is not None:
        parts.append(f"checkpoint at step {contents.checkpoint}")
    if contents.adapter:
        parts.append("a trained adapter")
    if contents.samples:
        parts.append(f"{contents.samples} samples")
    return ", ".join(parts)


def _other_folder(run_dir: Path, differences: list[tuple]) -> str:
    suffix = "-".join(f"{k.rsplit('.', 1)[-1]}{v}" for k, _, v in differences[:3])
    return f"{run_dir}-{suffix}".replace(" ", "")


def plan(run_dir: Path, cfg: DictConfig) -> Plan:
    """What a run with `cfg` does with `run_dir` (see the module docstring); raises FolderRefused."""
    contents = inspect(run_dir)
    if contents.kind == "foreign":
        raise FolderRefused(not_ours_message(run_dir, contents.entries))
    if contents.kind in ("missing", "empty"):
        return Plan("fresh", contents)
    if cfg.overwrite:
        return Plan("fresh", contents, clear=True, note=f"overwrite=true: replacing the run in {run_dir}")
    if contents.adapter_problem:
        raise FolderRefused(
            f"{run_dir} holds a run whose adapter.safetensors cannot be read ({contents.adapter_problem}), so "
            "neither its samples nor its scores can be trusted to be of it; nothing was changed. Ways out: "
            "overwrite=true trains it again; put back a whole copy of the file; or use another folder "
            "(hydra.run.dir=...)"
        )
    if not contents.work:
        return Plan("fresh", contents, clear=True, note=f"{run_dir} holds no trained work: starting it afresh")
    saved = saved_config(run_dir) or (contents.metrics or {}).get("run_info")
    finished = contents.status == "finished"
    what = "a finished run" if finished else f"an unfinished run ({_held(contents)})"
    if not isinstance(saved, dict):
        raise FolderRefused(
            f"{run_dir} holds {what} but no readable config.yaml, so its settings are unknown; "
            "overwrite=true replaces it, or use another folder (hydra.run.dir=...)"
        )
    differences = differing(saved, cfg, _stage_groups(contents, cfg))
    if differences:
        raise FolderRefused(
            f"{run_dir} holds {what} made with other settings ({describe(differences)}); nothing was changed. "
            f"Ways out: the same settings continue or reuse it; overwrite=true replaces it; or keep both with "
            f"another folder, e.g. hydra.run.dir={_other_folder(run_dir, differences)}"
        )
    if not finished:
        if not cfg.resume:
            raise FolderRefused(
                f"{run_dir} holds {what}; resume=false does not continue it. Ways out: drop resume=false (the "
                "default continues it), overwrite=true to discard it, or another folder (hydra.run.dir=...)"
            )
        return Plan("continue", contents, note=f"continuing the unfinished run in {run_dir} ({_held(contents)})")
    if cfg.sample.enabled and not contents.sampled:
        return Plan("continue", contents, note=f"{run_dir}: a finished run without samples; sampling it")
    wants_scores = cfg.sample.enabled and cfg.eval.enabled and "scores" not in contents.metrics
    if wants_scores and contents.sampled:
        return Plan("score", contents, note=f"{run_dir}: a finished run whose samples were never scored; scoring")
    return Plan("skip", contents, note=f"{run_dir} holds a finished run with these settings; kept as is")


def write_marker(run_dir: Path) -> None:
    """The marker that makes `run_dir` the harness's: written before anything else of a run."""
    made = {"created_at": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
    atomic_write_json(run_dir / MARKER, {"format": MARKER_FORMAT, "version": 1, **made, "owned": list(OWNED)})


def is_our_card(path: Path) -> bool:
    """Whether `path` is a model card the harness wrote (a README.md of the user's never is)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return CARD_MARK in f.read(1 << 16)
    except OSError:
        return False


def card_path(run_dir: Path) -> Path:
    """Where the run's model card goes: README.md, unless a file of that name is not ours (then MODEL_CARD.md)."""
    readme = run_dir / CARD_NAMES[0]
    return readme if not readme.exists() or is_our_card(readme) else run_dir / CARD_NAMES[1]


def clear_owned(run_dir: Path) -> None:
    """Remove what the harness wrote into `run_dir` (and its own temp files); everything else stays, named."""
    kept = []
    for name in sorted(os.listdir(run_dir)):
        if name == LOCK_NAME:  # held by this very run
            continue
        temp = name.startswith(".") and name.endswith(".tmp") and name[1:].startswith(OWNED)  # para.core.io's
        ours = name in OWNED or (name == CARD_NAMES[0] and is_our_card(run_dir / name))
        if not ours and not temp:
            kept.append(name)
            continue
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if kept:
        log.warning("%s: kept entries the harness did not write: %s", run_dir, ", ".join(kept))


def start(run_dir: Path, chosen: Plan) -> dict[str, Any] | None:
    """Make the folder ready for the run (marker first); returns the metrics to continue from, if any."""
    if chosen.clear:
        clear_owned(run_dir)
    if chosen.note:
        log.info("%s", chosen.note)
    if not (run_dir / MARKER).is_file():
        write_marker(run_dir)
    return chosen.metrics if chosen.action in ("continue", "score") else None


# --- folders made for a run that never began ---------------------------------------------------------------


class CreatedFolders(Callback):
    """Hydra callback: remembers which folders Hydra is about to create for a single run (`hydra.run.dir`), so
    that a run that never began removes exactly those, never a folder the user made (`remove_created`)."""

    created: list[Path] = []  # deepest first, absolute

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        out = Path(str(config.hydra.run.dir)).absolute()
        problem = run_dir_problem(out)
        if problem:  # Hydra would make the folder next, and fail with a traceback
            print(f"{problem}", file=sys.stderr)
            raise SystemExit(2)
        CreatedFolders.created = [p for p in (out, *out.parents) if not p.exists()]


def run_dir_problem(out: Path) -> str | None:
    """Why no run folder can be made at `out`: it, or a folder above it, is a file."""
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is None:
        return None
    return (
        f"the run folder {out} cannot be made: {blocking} is a file, not a folder; nothing was touched. "
        "Give the run a folder path (hydra.run.dir=...; the default is runs/<method>/<subject>/steps<N>-seed<k>)"
    )


def remove_created(out: Path, multirun: bool, started_at: float) -> None:
    """After a run that never began: remove the empty folders made for it.

    A single run knows them exactly (`CreatedFolders`). A multirun cell's folder is made by the launcher with no
    hook before it: only that leaf is removed, and only if empty and made after this process started.
    """
    out = out.absolute()
    if multirun:
        candidates = [out] if out.is_dir() and out.stat().st_mtime >= started_at else []
    else:
        candidates = [p for p in CreatedFolders.created if p == out or p in out.parents]
    for folder in candidates:
        try:
            folder.rmdir()  # only when empty
        except OSError:
            break
