"""SDXL 1.0 base's UNet architecture, shipped with the package: build it on the meta device with no weights.

Every shape is real (2,567,463,684 parameters), no memory is used and nothing is downloaded, so parameter counts,
FLOPs and memory plans can be computed exactly on any machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

SDXL_CONFIG_PATH = Path(__file__).with_name("sdxl_unet_config.json")
SDXL_TOTAL_PARAMS = 2_567_463_684  # diffusers UNet2DConditionModel of stabilityai/stable-diffusion-xl-base-1.0


def sdxl_unet_config() -> dict:
    """The diffusers config of SDXL 1.0 base's UNet (unet/config.json), shipped with the package."""
    return json.loads(SDXL_CONFIG_PATH.read_text())


def build_sdxl_unet_meta() -> nn.Module:
    """SDXL's UNet2DConditionModel on the meta device: every shape, no memory, no weights."""
    from diffusers import UNet2DConditionModel  # slow import, only when needed

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(sdxl_unet_config())
