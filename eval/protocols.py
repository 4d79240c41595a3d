"""Scoring protocols: which scores a run gets, how tables label and plot them, and what must be installed.

`eval.backbones=pretrained|random` score with DreamBench's protocol (DINO, CLIP-I, CLIP-T, the authors' CLIP score,
LPIPS, SSIM; `eval.score`). Any other `eval.backbones` value names a protocol that a package registers under the
entry-point group `para.scorers` (pyproject.toml), e.g. `eval.backbones=world` (the `world` package's exact
evaluators). The harness knows protocols only through this interface, never through their names.

A protocol's `score_run(run_dir, run_info, entries, opts, cache_dir)` returns a scores dict holding at least its
`score_keys`, `protocol` (its name), `n_prompts`, `n_images`, `backbones_pretrained` / `_all`; tables read the
protocol back from `scores.protocol` to pick columns, labels, plot axes and the banner.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eval.options import ENTRY_POINT_GROUP, backbone_modes, registered_protocols


@dataclass(frozen=True)
class Protocol:
    name: str
    score_keys: tuple[str, ...]  # every score a run gets, in table order
    labels: dict[str, str]  # column headers
    fidelity: str  # subject fidelity: the y axis of the trade-off plot
    alignment: str  # text alignment: its x axis
    reference_keys: tuple[str, ...]  # scores a "real images" reference row has (empty: no such row)
    # (run_dir, run_info, entries, opts, cache_dir) -> scores; entries: read_samples' validated prompt entries
    score_run: Callable[..., dict[str, Any]]
    missing: Callable[[Any], list[str]]  # what scoring with these options needs and does not find (empty: ready)
    banner: str | None = None  # printed on every table and plot made with this protocol
    lower_is_better: frozenset[str] = field(default_factory=frozenset)
    # real-images reference: (data_root, subject, opts, cache_dir) -> {key: value}; None: no reference row
    real_reference: Callable[..., dict[str, float]] | None = None
    # Per-image scores for the paper's other experiments (experiments.scoring): (opts, data_root) -> a scorer with
    # `pretrained` and `score_images(images, prompts, clean_prompts, subjects, tokens)` -> pandas.DataFrame, one
    # row per image: a column per score, `<key>_<subject>` for each subject asked about and `<key>_min` over them
    # when there are several. None: the experiments cannot score with this protocol.
    image_scorer: Callable[..., Any] | None = None


def load_protocol(name: str) -> Protocol:
    """A registered protocol (`eval.options.registered_protocols`), loaded; an unknown name is refused."""
    plugins = registered_protocols()
    if name not in plugins:
        raise ValueError(
            f"eval.backbones={name!r}: no such scoring protocol; expected one of {list(backbone_modes())} "
            f"(protocols are registered under the entry-point group {ENTRY_POINT_GROUP!r}: reinstall with "
            "`make install` after adding one)"
        )
    return _load(name)


@functools.cache
def _load(name: str) -> Protocol:
    protocol = registered_protocols()[name].load()
    if not isinstance(protocol, Protocol):
        raise TypeError(f"entry point {name!r} of {ENTRY_POINT_GROUP} is {type(protocol).__name__}, not a Protocol")
    return protocol
