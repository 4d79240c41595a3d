"""A real-size SDXL pipeline with RANDOM weights, for speed and memory benchmarks on a GPU (no download).

Speed and memory depend on shapes, not on weight values, so the benchmark needs no SDXL weights: the UNet is
SDXL 1.0's architecture built on the meta device (`para.core.sdxl_architecture.build_sdxl_unet_meta`) and materialized
on the target device; the text encoders and VAE have SDXL's real sizes (CLIP ViT-L/14 text model, OpenCLIP
ViT-bigG/14 text model with projection, the SDXL VAE). Tokenizers and scheduler come from the tiny pipeline
(the same CLIP vocabulary and SDXL noise schedule). Nothing here is ever a quality number.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from para.core.models import NO_WATERMARK, build_random_pipeline
from para.core.sdxl_architecture import build_sdxl_unet_meta

# Hyper-parameters of SDXL 1.0 base's components (their config.json files on the hub).
SDXL_TEXT_ENCODERS: tuple[dict[str, Any], dict[str, Any]] = (
    dict(
        hidden_size=768,
        intermediate_size=3072,
        num_attention_heads=12,
        num_hidden_layers=12,
        projection_dim=768,
        hidden_act="quick_gelu",
    ),  # CLIP ViT-L/14
    dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_attention_heads=20,
        num_hidden_layers=32,
        projection_dim=1280,
        hidden_act="gelu",
    ),  # OpenCLIP ViT-bigG/14
)
SDXL_VAE: dict[str, Any] = dict(
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
CLIP_TOKENS = dict(
    vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407
)


@torch.no_grad()
def materialize(module: nn.Module, device: torch.device | str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """Give a meta-device module real, randomly initialised storage on `device` in `dtype`.

    Every submodule with `reset_parameters` (Linear, Conv2d, norms, embeddings) re-runs its own PyTorch
    initialisation; any other parameter gets N(0, 0.02²). Buffers cannot be re-derived after `to_empty`, so a
    module holding any is refused rather than left with garbage in it.
    """
    buffers = [name for name, _ in module.named_buffers()]
    if buffers:
        raise ValueError(f"cannot materialize {type(module).__name__}: it has buffers {buffers[:3]} to re-derive")
    module.to_empty(device=device)
    torch.manual_seed(seed)
    done: set[int] = set()
    for sub in module.modules():
        own = list(sub.parameters(recurse=False))
        if own and hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
            done.update(id(p) for p in own)
    for param in module.parameters():
        if id(param) not in done:
            param.normal_(0.0, 0.02)
    return module.to(dtype)


def build_sdxl_random_pipeline(
    device: torch.device | str,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    unet: nn.Module | None = None,
    text_encoders: tuple[dict, dict] = SDXL_TEXT_ENCODERS,
    vae: dict | None = None,
) -> StableDiffusionXLPipeline:
    """SDXL-sized pipeline with random weights on `device`, frozen and in eval mode.

    `unet` (a meta-device UNet) and the component sizes default to SDXL's; tests pass tiny ones.
    """
    unet = materialize(unet if unet is not None else build_sdxl_unet_meta(), device, dtype, seed)
    vae_cfg = vae or SDXL_VAE
    with torch.device(device):  # small enough to initialise directly where they run
        torch.manual_seed(seed + 1)
        encoders = [
            cls(CLIPTextConfig(**CLIP_TOKENS, **cfg))
            for cls, cfg in zip((CLIPTextModel, CLIPTextModelWithProjection), text_encoders, strict=True)
        ]
        autoencoder = AutoencoderKL(in_channels=3, out_channels=3, **vae_cfg)
    hidden = sum(cfg["hidden_size"] for cfg in text_encoders)
    if unet.config.cross_attention_dim != hidden:
        raise ValueError(f"UNet cross-attention width {unet.config.cross_attention_dim} != text widths {hidden}")
    shared = build_random_pipeline("tiny", seed).components  # tokenizers and scheduler only
    pipe = StableDiffusionXLPipeline(
        **{**shared, "unet": unet, "vae": autoencoder, "text_encoder": encoders[0], "text_encoder_2": encoders[1]},
        **NO_WATERMARK,
    )
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.to(dtype).requires_grad_(False).eval()
    return pipe
