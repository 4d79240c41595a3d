"""Which settings define what a run folder holds, and which of them differ between a folder and a request.

A run folder is reused (kept, continued or scored) only with the settings that made what it holds: the training
settings for its checkpoints and adapter, the sampling settings for its samples, the scoring settings for its
scores. Bookkeeping that cannot change a result (resume is exact, paths may be spelt differently, how often to
checkpoint or log, how many images go through the UNet at once) is never compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

TRAINING = ("method", "subject", "model", "data", "train", "steps", "seed")
SAMPLING = ("sample",)
SCORING = ("eval",)
BOOKKEEPING = (
    "data.root",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.log_every",
    "train.class_images_dir",
    "train.gradient_checkpointing",
    "train.compile",
    "sample.enabled",
    "sample.batch_size",  # each image keeps its own seed whatever the batch (tests/test_run.py)
    "eval.enabled",
    "eval.device",
    "eval.batch_size",
)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` → `{"a.b": 1}` (lists stay values)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def as_dict(cfg: DictConfig | dict) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def differing(saved: DictConfig | dict, wanted: DictConfig | dict, groups: tuple[str, ...]) -> list[tuple]:
    """(key, saved value, wanted value) for every setting of `groups` that differs, sorted by key.

    Keys only one side has (a setting added or removed by a newer version of the harness) are not compared.
    """
    old, new = as_dict(saved), as_dict(wanted)
    old = flatten({k: old.get(k) for k in groups if k in old})
    new = flatten({k: new.get(k) for k in groups if k in new})
    keys = (k for k in old.keys() & new.keys() if not k.startswith(BOOKKEEPING))
    return sorted((k, old[k], new[k]) for k in keys if old[k] != new[k])


def describe(differences: list[tuple], limit: int = 8) -> str:
    """`method.rank: 2 there, 8 here; ...` (at most `limit`, then how many more)."""
    shown = "; ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in differences[:limit])
    return shown + (f"; and {len(differences) - limit} more" if len(differences) > limit else "")


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config a run folder was made with (its config.yaml), or None if there is none readable."""
    try:
        return OmegaConf.to_container(OmegaConf.load(Path(run_dir) / "config.yaml"), resolve=True)
    except Exception:  # noqa: BLE001 - missing, half-written or foreign YAML: the folder cannot say
        return None
