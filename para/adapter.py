"""PaRa as a method of the harness: wrap the chosen UNet layers, train only their B's (PAPER.md §1–3)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from para.batched_qr import SharedBases
from para.core.method import check_range, check_rank
from para.layers import INITS, PaRaLayer, initial_b, out_features
from para.layerwise import LayerwiseMethod


@dataclass
class ParaConfig:
    name: str = "para"
    # Directions removed per layer. The paper compares at the same rank notion as LoRA r=16 and ablates r=1..16.
    rank: int = 16
    # Rank boundary γ (paper: 1/40): per layer r_eff = min(r, ⌊d_out·γ⌋), at least 1. None disables the cap.
    gamma: float | None = 0.025
    # Layer subset (paper's ExCA = noxattn) or a list of module-name regexes.
    subset: Any = "noxattn"
    # gaussian (reading: the paper's zero init cannot go through QR) | weakest (start where W0 is weakest)
    init: str = "gaussian"
    init_std: float = 0.02
    lr: float = 1e-4  # reading: not stated in the paper
    # Q = qr(B) of all layers of one B shape in one batched QR per step (para.batched_qr; the same Q); false: one
    # QR per layer (the reference `make bench` compares with)
    batch_qr: bool = True


def effective_rank(rank: int, width: int, gamma: float | None) -> int:
    """The rank boundary of PAPER.md §2, applied to every layer (authors' code: conv layers only).

    The `max(1, ·)` is our reading for layers narrower than 1/γ (only in tiny test models; SDXL's narrowest
    layer has 320 outputs → 8).
    """
    if gamma is None:
        return rank
    return min(rank, max(1, math.floor(width * gamma + 1e-9)))


class PaRa(LayerwiseMethod):
    name = "para"
    Config = ParaConfig
    layer_type = PaRaLayer

    def __init__(self, cfg: Any, base_model: str):
        super().__init__(cfg, base_model)
        self.ranks: dict[str, int] = {}  # effective rank per layer, recorded in the adapter metadata
        self.shared_bases: SharedBases | None = None
        self.widths: dict[str, int] = {}  # outputs per layer

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        super().validate_config(cfg)
        check_rank(cfg)
        if cfg.gamma is not None and not 0 < cfg.gamma <= 1:
            raise ValueError(f"method.gamma={cfg.gamma} is out of range; expected (0, 1] or null to disable")
        if cfg.init not in INITS:
            raise ValueError(f"unknown PaRa init {cfg.init!r}; expected one of {list(INITS)}")
        check_range(cfg.init_std > 0, "method.init_std", cfg.init_std, "a standard deviation > 0")

    def detach(self, unet: nn.Module) -> None:
        if self.shared_bases is not None:
            self.shared_bases.detach()
            self.shared_bases = None
        super().detach(unet)

    def wrap(self, name: str, module: nn.Linear | nn.Conv2d) -> PaRaLayer:
        width = out_features(module)
        rank = effective_rank(self.cfg.rank, width, self.cfg.gamma)
        if rank >= width:
            raise ValueError(
                f"method.rank={rank} is out of range for layer {name} with {width} outputs; need rank < {width}"
            )
        self.ranks[name], self.widths[name] = rank, width
        b = initial_b(module, rank, self.cfg.init, self.cfg.init_std, torch.default_generator)
        return self.layer_type(module, b)

    def attach(self, unet: nn.Module) -> list[nn.Parameter]:
        params = super().attach(unet)
        widest = max(self.widths.values(), default=0)
        if self.cfg.gamma is not None and self.cfg.rank >= widest > 0:  # γ silently capped method.rank=100000
            raise ValueError(
                f"method.rank={self.cfg.rank} is wider than every adapted layer (the widest has {widest} outputs); "
                f"γ={self.cfg.gamma} caps each layer at ⌊d_out·γ⌋, here {self._capped()}. Ask for at most "
                f"method.rank={max(self.ranks.values())}, or method.gamma=null with a rank below each layer's width"
            )
        if self.cfg.batch_qr and issubclass(self.layer_type, PaRaLayer):  # para_authors: no QR after attaching
            self.shared_bases = SharedBases(self.layers(unet).values()).attach(unet)
        return params

    def _capped(self) -> str:
        low, high = min(self.ranks.values()), max(self.ranks.values())
        return f"rank {low}" if low == high else f"ranks {low}..{high}"

    def attach_notes(self) -> list[str]:
        if self.cfg.gamma is None or not self.ranks or self.cfg.rank <= max(self.ranks.values()):
            return []
        return [
            f"method.rank={self.cfg.rank} is above γ's cap on every layer: PaRa trains {self._capped()} "
            f"(⌊d_out·γ⌋, γ={self.cfg.gamma}); method.gamma=null applies the rank as asked"
        ]

    def summary(self) -> dict[str, Any]:
        return {"layers": len(self.ranks), "ranks": self.ranks}


def unwrap_merged(unet: nn.Module) -> nn.Module:
    """Replace every PaRa layer by its base layer carrying the merged weight (I − QQᵀ)W0, in place.

    The result is a plain diffusers UNet that `save_pretrained` writes for users of stock diffusers.
    """
    for name, module in list(unet.named_modules()):
        if isinstance(module, PaRaLayer):
            module.merge()
            unet.set_submodule(name, module.base)
    return unet


def count_para_params(modules: dict[str, nn.Module], rank: int, gamma: float | None) -> int:
    """Trainable parameters of PaRa on these layers: Σ d_out · r_eff (LoRA: Σ r · (d_in·k² + d_out))."""
    return sum(out_features(m) * effective_rank(rank, out_features(m), gamma) for m in modules.values())
