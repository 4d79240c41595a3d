"""The resource plan's counts of SDXL's common settings, shipped with the package: a fresh checkout's first plan
(the preflight of every real run, `make plan`) looks them up instead of counting SDXL on fake tensors (~10 s per
setting on 2 cores, a minute when the memory check looks for options that fit).

    python -m para.run.ship_counts        # `make plan-counts`: count every setting below afresh, rewrite the table

The table (`plan_counts.json`) holds what `make plan` counts (every method on 24/40/80 GB cards, the options that
would fit, DreamBooth's options) and each of the paper's three commands on a CUDA card and on a CPU. Entries are
keyed by the setting and the versions of the libraries the count runs through (torch, diffusers, transformers, peft),
not by this checkout's code: a change to the trainer or a method that changes what is counted must rewrite the table
(tests/test_plan_shipped.py recounts entries against it in the slow set, which CI runs). A setting not in the table, or
other library versions, is counted as before (para.run.plan_count) and cached in `plan.cache_dir`.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("plan_counts.json")
LIBRARIES = ("torch", "diffusers", "transformers", "peft")
PAPER_METHODS = ("para", "lora", "dreambooth")  # `python run.py method=<m> subject=dog` (README)
RECORDING: dict[str, dict] | None = None  # within `counting()`: every count used, by its key


@lru_cache(maxsize=1)
def library_versions() -> str:
    """The versions the counts depend on besides this package's code (the UNet's forward is diffusers')."""

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    return " ".join(f"{name}=={of(name)}" for name in LIBRARIES)


@lru_cache(maxsize=1)
def _table() -> dict[str, dict]:
    try:
        return json.loads(TABLE.read_text())["counts"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def lookup(key: str, cls: type) -> Any | None:
    """The shipped counts under `key` as a `cls` (TrainCounts, SampleCounts), or None (not shipped; within
    `counting()`)."""
    entry = None if RECORDING is not None else _table().get(key)
    if entry is None:
        return None
    try:
        return cls(**entry)
    except TypeError:  # a table written for other fields: count instead
        return None


def record(key: str, counts: Any) -> None:
    """Within `counting()`: `counts` (of this code: counted now or cached by `plan.cache_dir`) are recorded."""
    if RECORDING is not None:
        RECORDING[key] = dataclasses.asdict(counts)


@contextmanager
def counting():
    """Within: the table is not consulted, and every count used (counted now, or cached by `plan.cache_dir` for
    this code) is recorded in the dict yielded, by its shipped key. Call `plan_count.forget()` first: counts this
    process took from the table before are not counts of this code."""
    global RECORDING
    RECORDING = {}
    try:
        yield RECORDING
    finally:
        RECORDING = None
