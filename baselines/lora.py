"""LoRA baseline through peft, saved in the format diffusers' `pipe.load_lora_weights` reads (PAPER.md §4).

Trained at scale 1 (lora_alpha = rank) and sampled with the delta multiplied by `scale` = 2.2: the
cloneofsimo-style inference multiplier the paper cites. The scale is recorded in the file, because a LoRA
reloaded without it samples different images.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from torch import Tensor, nn

from para.method import Method
from para.subsets import SUBSETS, select_modules

ADAPTER = "default"


@dataclass
class LoraMethodConfig:
    name: str = "lora"
    rank: int = 16  # paper: r = 16 for the comparison
    alpha: float | None = None  # None: alpha = rank, i.e. trained at scale 1 (cloneofsimo convention)
    scale: float = 2.2  # paper: α = 2.2, the multiplier applied to the LoRA delta at sampling time
    subset: Any = "noxattn"  # same layers as PaRa (ExCA) for a like-for-like comparison; `attn` = diffusers default
    init: str = "gaussian"  # diffusers' DreamBooth-LoRA example: A ~ N(0, 1/r), B = 0 (starts as the identity)
    lr: float = 1e-4  # reading: the diffusers example's default


class Lora(Method):
    name = "lora"
    Config = LoraMethodConfig

    def __init__(self, cfg: Any, base_model: str):
        super().__init__(cfg, base_model)
        self.targets: list[str] = []

    @classmethod
    def validate_config(cls, cfg: Any) -> None:
        if cfg.rank <= 0:
            raise ValueError(f"method.rank={cfg.rank} is out of range; expected an integer > 0")
        if cfg.scale < 0:
            raise ValueError(f"method.scale={cfg.scale} is out of range; expected >= 0")
        if isinstance(cfg.subset, str) and cfg.subset not in SUBSETS:
            raise ValueError(f"unknown layer subset {cfg.subset!r}; expected one of {sorted(SUBSETS)} or a list")

    def peft_config(self) -> LoraConfig:
        # An anchored regex of the exact module names: peft full-matches a string target against each name.
        pattern = "^(" + "|".join(re.escape(n) for n in self.targets) + ")$"
        init = True if self.cfg.init == "default" else self.cfg.init
        return LoraConfig(r=self.cfg.rank, lora_alpha=self.cfg.alpha or self.cfg.rank, init_lora_weights=init,
                          target_modules=pattern)

    def attach(self, unet: nn.Module) -> list[nn.Parameter]:
        self.validate_config(self.cfg)
        unet.requires_grad_(False)
        self.targets = list(select_modules(unet, self.cfg.subset))
        unet.add_adapter(self.peft_config(), adapter_name=ADAPTER)
        params = [p for n, p in unet.named_parameters() if ".lora_" in n]
        for p in params:  # trainable tensors in fp32 even when the frozen weights are bf16 (diffusers example)
            p.data = p.data.float()
            p.requires_grad_(True)
        return params

    def state_dict(self, unet: nn.Module) -> dict[str, Tensor]:
        return get_peft_model_state_dict(unet, adapter_name=ADAPTER)

    def load_state_dict(self, unet: nn.Module, state: dict[str, Tensor]) -> None:
        expected = self.state_dict(unet)
        if set(state) != set(expected):
            raise ValueError(f"LoRA state does not fit this UNet: {len(state)} tensors given, {len(expected)} expected")
        for key, tensor in state.items():
            if tensor.shape != expected[key].shape:
                raise ValueError(f"{key}: saved shape {tuple(tensor.shape)} != {tuple(expected[key].shape)} here")
        result = set_peft_model_state_dict(unet, state, adapter_name=ADAPTER)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"LoRA state has keys this UNet lacks: {result.unexpected_keys[:3]}")

    def summary(self) -> dict[str, Any]:
        return {"layers": len(self.targets), "rank": self.cfg.rank, "alpha": self.cfg.alpha or self.cfg.rank,
                "scale": self.cfg.scale}

    def to_saved(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {f"unet.{k}": v for k, v in convert_state_dict_to_diffusers(state).items()}

    def from_saved(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        unet_state = {k.removeprefix("unet."): v for k, v in tensors.items() if k.startswith("unet.")}
        peft_state = convert_unet_state_dict_to_peft(unet_state)
        return {k.replace(f".{ADAPTER}.", "."): v for k, v in peft_state.items()}

    def metadata(self) -> dict[str, str]:
        config = self.peft_config().to_dict()
        config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
        # diffusers reads this key to rebuild the LoraConfig (rank, alpha, targets) in `load_lora_weights`.
        lora_meta = {f"unet.{k}": v for k, v in config.items() if k in ("r", "lora_alpha", "target_modules",
                                                                          "init_lora_weights")}
        return {**super().metadata(), "format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(lora_meta, sort_keys=True),
                "lora_scale": str(self.cfg.scale)}

    def prepare_for_sampling(self, unet: nn.Module, merge: bool) -> None:
        unet.set_adapters([ADAPTER], weights=[self.cfg.scale])

    def finish_sampling(self, unet: nn.Module) -> None:
        unet.set_adapters([ADAPTER], weights=[1.0])


@torch.no_grad()
def lora_delta(module: nn.Module) -> Tensor:
    """The merged weight delta scaling·B·A of a peft LoRA layer (for tests and explicit-weight oracles)."""
    return module.get_delta_weight(ADAPTER)
