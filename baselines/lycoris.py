"""LyCORIS-family baselines through peft (the reviewers' request, PAPER.md §8): LoHa, LoKr and OFT.

All three are peft tuners injected with `unet.add_adapter` on the same layer subsets as PaRa and LoRA, trained
from peft's identity initialization, saved as peft state dicts with the peft config in the file's metadata, and
sampled unmerged (like LoRA; `sample.merge` does not apply). Ranks are chosen for parameter budgets comparable
with LoRA r16 (17,280,000 on SDXL ExCA) and PaRa r16 γ=1/40 (6,120,960); conf/method/<name>.yaml states them.

    LoHa  ΔW = (A1 B1) ⊙ (A2 B2) · α/r         params per layer 2·r·(m + n·k²)   (conv kernels flattened)
    LoKr  ΔW = W1 ⊗ (A2 B2) · α/r              W1 and W2's factors from peft's factorization of m and n
    OFT   W = W0 Rᵀ, R block-diagonal orthogonal (Cayley), rotating the n·k² inputs; params Σ (n·k²/b)·b(b−1)/2

OFT on k×k convolutions (k > 1): peft 0.21's OFT Conv2d forward rotates unfolded input patches and folds them
back with `F.fold`, which *sums* overlapping patches, so the layer is not the base layer at initialization (R = I)
and disagrees with its own merged weight (tests/test_methods_extra.py shows both). We keep peft's parameters,
Cayley map, merge and file format, and run those layers through the rotated weight W0 Rᵀ — what peft's `merge`
computes — built block by block (never the dense (n·k²)² matrix of `get_delta_weight`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from baselines.peft_adapter import PeftAdapter
from para.core.method import check_alpha, check_rank
from para.core.subsets import select_modules

if TYPE_CHECKING:  # peft loads when an adapter is built: composing a config or refusing a run never waits for it
    from peft import PeftConfig


@dataclass
class LohaMethodConfig:
    name: str = "loha"
    rank: int = 8  # 2·r·(m + n·k²) at r = 8 equals LoRA r16's r·(m + n·k²): 17,280,000 on SDXL ExCA
    alpha: float | None = None  # None: alpha = rank, scale α/r = 1 (as LoRA here)
    subset: Any = "noxattn"  # same ExCA layers as PaRa and LoRA
    lr: float = 1e-4  # reading: LoRA's rate (not tuned per method)


@dataclass
class LokrMethodConfig:
    name: str = "lokr"
    rank: int = 64  # rank of W2's factors; with decompose_factor 4: 17,336,736 on SDXL ExCA (LoRA r16 + 0.3%)
    alpha: float | None = None  # None: alpha = rank, scale 1
    decompose_factor: int = 4  # W1 is (f × f) where the width divides by f; W2 carries the rest
    subset: Any = "noxattn"
    lr: float = 1e-4  # reading: LoRA's rate


@dataclass
class OftMethodConfig:
    name: str = "oft"
    block_size: int = 32  # peft's default; 10,763,200 on SDXL ExCA (between PaRa r16 and LoRA r16)
    cayley_neumann: bool = True  # peft's default: Neumann-series Cayley map (cheap, approximately orthogonal)
    subset: Any = "noxattn"
    lr: float = 1e-4  # reading: LoRA's rate


class LycorisAdapter(PeftAdapter):
    """A peft tuner other than LoRA: plain peft state dict, the peft config in the file's metadata."""

    def summary(self) -> dict[str, Any]:
        return {"layers": len(self.targets)}

    def metadata(self) -> dict[str, str]:
        config = {k: v for k, v in self.peft_config_dict().items() if k != "target_modules"}
        return {**super().metadata(), "peft_config": json.dumps(config, sort_keys=True, default=str)}


class Loha(LycorisAdapter):
    name = "loha"
    Config = LohaMethodConfig
    param_marker = ".hada_"
    factor_rank = True

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        check_rank(cfg)
        check_alpha(cfg)
        super().validate_config(cfg)

    def peft_config(self) -> PeftConfig:
        from peft import LoHaConfig

        return LoHaConfig(r=self.cfg.rank, alpha=self.cfg.alpha or self.cfg.rank, target_modules=self.target_pattern())


class Lokr(LycorisAdapter):
    name = "lokr"
    Config = LokrMethodConfig
    param_marker = ".lokr_"

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        check_rank(cfg)
        check_alpha(cfg)
        if cfg.decompose_factor != -1 and cfg.decompose_factor < 2:
            raise ValueError(f"method.decompose_factor={cfg.decompose_factor} is out of range; expected -1 or >= 2")
        super().validate_config(cfg)

    def peft_config(self) -> PeftConfig:
        from peft import LoKrConfig

        return LoKrConfig(
            r=self.cfg.rank,
            alpha=self.cfg.alpha or self.cfg.rank,
            decompose_factor=self.cfg.decompose_factor,
            target_modules=self.target_pattern(),
        )


def oft_input_dim(module: nn.Module) -> int:
    """The dimension OFT rotates: in_features, or c_in·k_h·k_w for a conv (peft flattens the kernel)."""
    if isinstance(module, nn.Conv2d):
        return module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    return module.in_features


class Oft(LycorisAdapter):
    name = "oft"
    Config = OftMethodConfig
    param_marker = ".oft_R."

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        if cfg.block_size < 2:
            raise ValueError(f"method.block_size={cfg.block_size} is out of range; expected an integer >= 2")
        super().validate_config(cfg)

    def select_targets(self, unet: nn.Module) -> list[str]:
        # peft silently changes a block size that does not divide a layer's input dimension; refuse instead.
        modules = select_modules(unet, self.cfg.subset)
        bad = {n: oft_input_dim(m) for n, m in modules.items() if oft_input_dim(m) % self.cfg.block_size}
        if bad:
            name, dim = next(iter(bad.items()))
            raise ValueError(
                f"method.block_size={self.cfg.block_size} does not divide the input dimension {dim} of "
                f"{name} ({len(bad)} such layers); choose a divisor of every layer's input dimension"
            )
        return list(modules)

    def peft_config(self) -> PeftConfig:
        from peft import OFTConfig

        return OFTConfig(
            r=0,
            oft_block_size=self.cfg.block_size,
            use_cayley_neumann=self.cfg.cayley_neumann,
            target_modules=self.target_pattern(),
        )

    def attach(self, unet: nn.Module) -> list[nn.Parameter]:
        from peft.tuners.oft.layer import Conv2d as PeftOftConv2d

        from baselines.oft_conv import OftConv2dByWeight

        params = super().attach(unet)
        for name in self.targets:
            layer = unet.get_submodule(name)
            if isinstance(layer, PeftOftConv2d) and layer.get_base_layer().kernel_size != (1, 1):
                layer.__class__ = OftConv2dByWeight  # same state, corrected forward (module docstring)
        return params
