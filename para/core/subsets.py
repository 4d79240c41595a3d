"""Which UNet layers a method adapts, by module name (PAPER.md §3).

Names follow diffusers' `UNet2DConditionModel`. The default `noxattn` is the paper's "ExCA" (exclude
cross-attention): on SDXL it selects 346 modules. PaRa and LoRA share these subsets so that a comparison is
like for like. A user can also pass a list of regular expressions (full match against the module name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn

_ATTN_PROJ = r"(to_q|to_k|to_v|to_out\.0)"
_RESNET = r"resnets\.\d+\.(conv1|conv2|time_emb_proj|conv_shortcut)"
_SAMPLERS = r"(downsamplers|upsamplers)\.0\.conv"

SUBSETS: dict[str, list[str]] = {
    # ExCA (paper's choice): self-attention, every ResNet conv / time projection / shortcut, resamplers.
    "noxattn": [rf".*attn1\.{_ATTN_PROJ}", rf".*{_RESNET}", rf".*{_SAMPLERS}"],
    "selfattn": [rf".*attn1\.{_ATTN_PROJ}"],
    "xattn": [rf".*attn2\.{_ATTN_PROJ}"],
    "xattn-strict": [r".*attn2\.(to_q|to_k)"],
    # every attention projection (the diffusers LoRA default: q/k/v/out of attn1 and attn2)
    "attn": [rf".*attn[12]\.{_ATTN_PROJ}"],
    # ExCA restricted to the mid block ("h-space" in the authors' code)
    "noxattn-hspace": [rf"mid_block\..*attn1\.{_ATTN_PROJ}", rf"mid_block\.{_RESNET}"],
    # every Linear and Conv2d of the UNet
    "full": [r".*"],
}

ADAPTABLE_TYPES = (nn.Linear, nn.Conv2d)


def check_subset(subset: Any) -> None:
    """Refuse an unknown subset name or a broken regex early (before any model is built); whether the patterns
    match any layer is checked where the model is known (para.run.preflight, on the model's architecture)."""
    if isinstance(subset, str) and subset not in SUBSETS:
        raise ValueError(f"unknown layer subset {subset!r}; expected one of {sorted(SUBSETS)} or a list")
    if not isinstance(subset, str):
        subset_patterns(subset)


def _compile(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"method.subset pattern {pattern!r} is not a regular expression: {err}") from None


def subset_patterns(subset: str | Iterable[str]) -> list[str]:
    """Patterns of a named subset, or the user's own list of regular expressions."""
    if isinstance(subset, str):
        if subset not in SUBSETS:
            raise ValueError(
                f"unknown layer subset {subset!r}; expected one of {sorted(SUBSETS)} or a list of regexes"
            )
        return SUBSETS[subset]
    patterns = [str(p) for p in subset]
    if not patterns:
        raise ValueError("layer subset is an empty list; give a subset name or at least one regex")
    for pattern in patterns:
        _compile(pattern)
    return patterns


def select_modules(model: nn.Module, subset: str | Iterable[str]) -> dict[str, nn.Module]:
    """Linear/Conv2d modules of `model` whose full name matches the subset, in model order.

    Raises ValueError when nothing matches: a typo in a pattern must not silently train nothing.
    """
    regex = re.compile("|".join(f"(?:{p})" for p in subset_patterns(subset)))
    chosen = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, ADAPTABLE_TYPES) and regex.fullmatch(name)
    }
    if not chosen:
        raise ValueError(f"layer subset {subset!r} matches no Linear/Conv2d module of {type(model).__name__}")
    return chosen
