"""The `merged` export: a plain diffusers UNet whose weights are W0 + ΔW (for PaRa: (I − QQᵀ)W0).

The result needs no code of this project and no LoRA support: `UNet2DConditionModel.from_pretrained(out)` and swap
it into a stock `StableDiffusionXLPipeline`. Sampling then costs exactly the base model; the file is a whole UNet
(SDXL: 5.1 GB in fp16).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from para.core.io import atomic_save_safetensors
from para.export.factors import LowRank

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # what diffusers' from_pretrained looks for


@torch.no_grad()
def merge_factors(unet: nn.Module, factors: dict[str, LowRank]) -> nn.Module:
    """W ← W0 + up·down on every exported layer, computed in float32 as PaRa merges (in place)."""
    for name, f in factors.items():
        weight = unet.get_submodule(name).weight
        weight.copy_((weight.float() + f.delta().to(weight.device)).to(weight.dtype))
    return unet


def write_merged_unet(
    unet: nn.Module, factors: dict[str, LowRank], out: Path, dtype: torch.dtype, metadata: dict[str, str]
) -> Path:
    """Merge (in place), then write `out/config.json` and the weights (with `metadata`) in `dtype`."""
    if getattr(unet, "peft_config", None):
        raise ValueError("the UNet carries LoRA layers (peft); the merged export needs a plain base UNet")
    merge_factors(unet, factors).to(dtype)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_config(out)
    state = {k: v.detach().contiguous() for k, v in unet.state_dict().items()}
    atomic_save_safetensors(state, out / WEIGHTS_NAME, metadata=metadata)
    return out
