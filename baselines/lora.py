"""LoRA baseline through peft, saved in the format diffusers' `pipe.load_lora_weights` reads (PAPER.md §4).

Trained at scale 1 (lora_alpha = rank) and sampled with the delta multiplied by `scale` = 2.2: the
cloneofsimo-style inference multiplier the paper cites. The scale is recorded in the file, because a LoRA
reloaded without it samples different images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from baselines.peft_adapter import ADAPTER, PeftAdapter
from para.core.method import check_alpha, check_range, check_rank

if TYPE_CHECKING:  # peft and diffusers load when an adapter is built (a refusal never waits for them)
    from peft import LoraConfig


@dataclass
class LoraMethodConfig:
    name: str = "lora"
    rank: int = 16  # paper: r = 16 for the comparison
    alpha: float | None = None  # None: alpha = rank, i.e. trained at scale 1 (cloneofsimo convention)
    scale: float = 2.2  # paper: α = 2.2, the multiplier applied to the LoRA delta at sampling time
    subset: Any = "noxattn"  # same layers as PaRa (ExCA) for a like-for-like comparison; `attn` = diffusers default
    init: str = "gaussian"  # diffusers' DreamBooth-LoRA example: A ~ N(0, 1/r), B = 0 (starts as the identity)
    lr: float = 1e-4  # reading: the diffusers example's default


@dataclass
class LoraAttnMethodConfig(LoraMethodConfig):
    name: str = "lora_attn"
    subset: Any = "attn"  # diffusers' SDXL DreamBooth-LoRA example: to_q/to_k/to_v/to_out.0, cross-attention included


class Lora(PeftAdapter):
    name = "lora"
    Config = LoraMethodConfig
    param_marker = ".lora_"
    factor_rank = True

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        check_rank(cfg)
        check_alpha(cfg)
        check_range(cfg.scale >= 0, "method.scale", cfg.scale, ">= 0")
        super().validate_config(cfg)

    def peft_config(self) -> LoraConfig:
        from peft import LoraConfig

        init = True if self.cfg.init == "default" else self.cfg.init
        return LoraConfig(
            r=self.cfg.rank,
            lora_alpha=self.cfg.alpha or self.cfg.rank,
            init_lora_weights=init,
            target_modules=self.target_pattern(),
        )

    def summary(self) -> dict[str, Any]:
        return {
            "layers": len(self.targets),
            "rank": self.cfg.rank,
            "alpha": self.cfg.alpha or self.cfg.rank,
            "scale": self.cfg.scale,
        }

    def to_saved(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        # peft key names (`lora_A` / `lora_B`) under diffusers' `unet.` prefix. Not convert_state_dict_to_diffusers:
        # it renames attention keys only (`lora.down`), and diffusers' loader then reads the mixed file as peft
        # format and silently drops every attention LoRA (checked with diffusers 0.42 on conv + attention targets).
        return {f"unet.{k}": v for k, v in state.items()}

    def from_saved(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        unet_state = {k.removeprefix("unet."): v for k, v in tensors.items() if k.startswith("unet.")}
        if any(".lora.down." in k or ".lora.up." in k for k in unet_state):  # older diffusers-format files
            from diffusers.utils import convert_unet_state_dict_to_peft

            unet_state = convert_unet_state_dict_to_peft(unet_state)
        return {k.replace(f".{ADAPTER}.", "."): v for k, v in unet_state.items()}

    def metadata(self) -> dict[str, str]:
        from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY

        config = self.peft_config_dict()
        # diffusers reads this key to rebuild the LoraConfig (rank, alpha, targets) in `load_lora_weights`.
        lora_meta = {
            f"unet.{k}": v
            for k, v in config.items()
            if k in ("r", "lora_alpha", "target_modules", "init_lora_weights")
        }
        return {
            **super().metadata(),
            "format": "pt",
            LORA_ADAPTER_METADATA_KEY: json.dumps(lora_meta, sort_keys=True),
            "lora_scale": str(self.cfg.scale),
        }

    def prepare_for_sampling(self, unet: nn.Module, merge: bool) -> bool:
        unet.set_adapters([ADAPTER], weights=[self.cfg.scale])
        return False  # peft layers stay unmerged; the scale applies either way

    def finish_sampling(self, unet: nn.Module) -> None:
        unet.set_adapters([ADAPTER], weights=[1.0])


@torch.no_grad()
def lora_delta(module: nn.Module) -> Tensor:
    """The merged weight delta scaling·B·A of a peft LoRA layer (for tests and explicit-weight oracles)."""
    return module.get_delta_weight(ADAPTER)


class LoraAttn(Lora):
    """LoRA on the layers diffusers' `train_dreambooth_lora_sdxl.py` trains (`target_modules` to_k, to_q, to_v,
    to_out.0: every attention, cross-attention included, where the identifier token is read); Table 1's `lora`
    row adapts PaRa's ExCA layers, as the authors' LoRA baseline did (docs/methods.md)."""

    name = "lora_attn"
    Config = LoraAttnMethodConfig
