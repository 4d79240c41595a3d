"""The `merged` export: a plain diffusers UNet whose weights are W0 + ΔW (for PaRa: (I − QQᵀ)W0).

The result needs no code of this project and no LoRA support: `UNet2DConditionModel.from_pretrained(out)` and swap
it into a stock `StableDiffusionXLPipeline`. Sampling then costs exactly the base model; the file is a whole UNet
(SDXL: 5.1 GB in fp16).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from para.core.io import atomic_save_safetensors
from para.core.method import Method
from para.export.factors import LowRank

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"  # what diffusers' from_pretrained looks for
MERGED_FILES = ("config.json", WEIGHTS_NAME)  # all a merged export's folder holds
_METHOD_MODULES = ("para.", "baselines.", "peft.")  # a module of these left in a baked UNet is no base module


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
    return write_unet(merge_factors(unet, factors), out, dtype, metadata)


@torch.no_grad()
def bake(unet: nn.Module, method: Method) -> nn.Module:
    """`unet` with `method` (attached, its adapter loaded) baked into plain weights, in place: every adapted layer
    becomes the base model's own module holding W0 + ΔW. For the methods without an exact LoRA form (DreamBooth,
    SVDiff, LoHa, LoKr, OFT) this is the one export every tool reads."""
    method.prepare_for_sampling(unet, merge=True)  # layerwise methods: merged base layers swapped in
    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):  # peft tuners (LoHa, LoKr, OFT): peft's own merge
            module.merge()
            unet.set_submodule(name, module.get_base_layer())
    left = [n for n, m in unet.named_modules() if type(m).__module__.startswith(_METHOD_MODULES)]
    if left:
        raise ValueError(f"{method.name}: layers not merged into plain modules: {left[:3]}")
    if hasattr(unet, "peft_config"):
        del unet.peft_config  # diffusers would save it as an adapter config
    return unet


def write_unet(unet: nn.Module, out: Path, dtype: torch.dtype, metadata: dict[str, str]) -> Path:
    """`out/config.json` and the weights of a plain diffusers UNet (with `metadata`) in `dtype`."""
    unet.to(dtype)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_config(out)
    state = {k: v.detach().contiguous() for k, v in unet.state_dict().items()}
    atomic_save_safetensors(state, out / WEIGHTS_NAME, metadata=metadata)
    return out
