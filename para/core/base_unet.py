"""The base model's UNet alone: what needs only W0 (exporting an adapter) never builds the text encoders and the VAE.

`load_pipeline` would read all four components (SDXL: ~14 GB in fp32 on a CPU) to hand out one; this reads the
UNet from the same files, with the same ways out when they are missing (para.core.models).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from para.core.models import (
    SDXL_HUB_ID,
    check_diffusers_version,
    check_weights_available,
    local_first,
    random_unet_config,
    resolve_dtype,
)


def load_pretrained_unet(
    path: str, revision: str | None, variant: str | None, dtype: torch.dtype, config_path: str | None = None
) -> UNet2DConditionModel:
    """The UNet of the weights `load_pretrained_pipeline` reads (a hub id, a diffusers folder, a single file with
    `config_path`); ModelLoadError naming what was tried otherwise."""
    check_diffusers_version()
    check_weights_available(path, revision)

    def load(is_file: bool, local_only: bool) -> UNet2DConditionModel:
        if is_file:  # a single file's configs: config_path's unet/, or diffusers' own lookup on the hub
            where = {"config": config_path, "subfolder": "unet"} if config_path else {}
            return UNet2DConditionModel.from_single_file(path, dtype=dtype, local_files_only=local_only, **where)
        return UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", revision=revision, variant=variant, dtype=dtype, local_files_only=local_only
        )

    return local_first(path, config_path, load)


def load_unet(model_cfg, device: torch.device, dtype: torch.dtype | None = None) -> UNet2DConditionModel:
    """The base model's UNet, frozen, on `device`, in `dtype` (default: the configured weights dtype there). The
    random models' UNet has the very weights `load_pipeline` gives: it is built first from the same seed."""
    dtype = dtype or resolve_dtype(model_cfg.weights_dtype, device)
    if model_cfg.kind == "pretrained":
        m = model_cfg
        unet = load_pretrained_unet(m.path or SDXL_HUB_ID, m.revision, m.variant, dtype, m.config_path)
    else:
        with torch.random.fork_rng(devices=[]):  # the caller's random state stays as it was
            torch.manual_seed(model_cfg.init_seed)
            unet = UNet2DConditionModel(**random_unet_config(model_cfg.kind))
    return unet.to(device=device, dtype=dtype).requires_grad_(False).eval()
