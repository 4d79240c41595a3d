"""Evaluation options: the fields of `para.run.config.EvalConfig`, readable from any object or mapping.

`eval` never imports the trainer's package, so it carries its own frozen (hashable, hence cacheable) copy of
the schema and accepts anything with those attributes: the Hydra node, a plain dict, a `run_info["eval"]`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from importlib.metadata import entry_points
from typing import Any

RANDOM_BANNER = "random backbones: not comparable with any paper"
# Scoring protocols beyond DreamBench's are registered by packages under this entry-point group (eval.protocols)
ENTRY_POINT_GROUP = "para.scorers"
BUILTIN_MODES = ("pretrained", "random")


@functools.cache
def registered_protocols() -> dict[str, Any]:
    """The entry points of the registered scoring protocols, by name (not loaded)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def backbone_modes() -> tuple[str, ...]:
    """Every accepted `eval.backbones` value."""
    return (*BUILTIN_MODES, *sorted(registered_protocols()))


@dataclass(frozen=True)
class EvalOptions:
    """What to score with. Defaults are those of `para.run.config.EvalConfig`."""

    # pretrained | random (random: offline tests only; outputs are flagged) | a registered protocol (eval.protocols)
    backbones: str = "pretrained"
    dino: str = "facebook/dino-vits16"  # hub id or local folder of a transformers ViTModel
    clip_arch: str = "ViT-B-32"  # open_clip architecture
    clip_pretrained: str = "openai"  # open_clip tag, local checkpoint file, or local transformers CLIP folder
    # clip_score's model (torchmetrics' CLIPScore default): hub id or local folder of a transformers CLIP
    clip_score_model: str = "openai/clip-vit-large-patch14"
    lpips_net: str = "alex"  # alex | vgg
    batch_size: int = 16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    lpips_size: int = 512  # side of the square both images are brought to before LPIPS

    def __post_init__(self) -> None:
        if self.backbones not in backbone_modes():
            raise ValueError(
                f"eval.backbones={self.backbones!r} is out of range; expected one of {list(backbone_modes())}"
            )
        if self.batch_size < 1:
            raise ValueError(f"eval.batch_size={self.batch_size!r} is out of range; expected an integer >= 1")
        if self.lpips_size < 64:  # as para.run.config.RANGES: LPIPS' AlexNet/VGG trunks need that much
            raise ValueError(f"eval.lpips_size={self.lpips_size!r} is out of range; expected an integer >= 64")

    @classmethod
    def from_any(cls, cfg: Any = None, **overrides: Any) -> EvalOptions:
        """Options from an object with these attributes or a mapping with these keys; None values are skipped.

        Unknown attributes of `cfg` (e.g. `enabled`) are ignored; `overrides` win over `cfg`.
        """
        values: dict[str, Any] = {}
        for f in fields(cls):
            if isinstance(cfg, Mapping):
                value = cfg.get(f.name)
            else:
                value = getattr(cfg, f.name, None)
            if value is not None:
                values[f.name] = value
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)

    @property
    def pretrained(self) -> bool:
        return self.backbones == "pretrained"
