"""Test helper: write a diffusers SDXL pipeline as an original-format single-file checkpoint (sgm/ComfyUI layout).

diffusers reads these files (`from_single_file`) but has no writer in its package (only the repository script
`scripts/convert_diffusers_to_original_sdxl.py`, with SDXL's block counts hard-coded), so this inverts diffusers'
own reader for any block count: the top-level key tables come from diffusers (`DIFFUSERS_TO_LDM_MAPPING`), the
per-block names follow `convert_ldm_unet_checkpoint` / `convert_ldm_vae_checkpoint` / `convert_open_clip_checkpoint`.
The tests load the file back through diffusers and compare every weight: a wrong name here fails there.
"""

from __future__ import annotations

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from torch import Tensor

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_L, CLIP_G = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}  # fmt: skip
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(rest: str, table: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    if rest.startswith("to_out.0."):
        head, tail = "to_out.0", rest.removeprefix("to_out.0.")
    return f"{table.get(head, head)}.{tail}"


def unet_key(key: str, config) -> str:
    """A diffusers UNet key as `model.diffusion_model.*` (input_blocks / middle_block / output_blocks)."""
    top = {
        d: ldm
        for table in ("layers", "addition_embed_type")
        for d, ldm in DIFFUSERS_TO_LDM_MAPPING["unet"][table].items()
    }
    if key in top:
        return UNET + top[key]
    parts = key.split(".")
    per_block = config.layers_per_block + 1
    if parts[0] == "down_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.* -> the op of the block's last input block
            return f"{UNET}input_blocks.{(block + 1) * per_block}.0.op.{parts[-1]}"
        index = block * per_block + int(parts[3]) + 1
        rest = ".".join(parts[4:])
        return (
            f"{UNET}input_blocks.{index}.0.{_rename(rest, RESNET)}"
            if kind == "resnets"
            else f"{UNET}input_blocks.{index}.1.{rest}"
        )
    if parts[0] == "mid_block":
        rest = ".".join(parts[3:])
        if parts[1] == "attentions":
            return f"{UNET}middle_block.1.{rest}"
        return f"{UNET}middle_block.{2 * int(parts[2])}.{_rename(rest, RESNET)}"
    if parts[0] == "up_blocks":
        block, kind = int(parts[1]), parts[2]
        has_attention = config.up_block_types[block].startswith("CrossAttn")
        if kind == "upsamplers":
            return (
                f"{UNET}output_blocks.{block * per_block + per_block - 1}.{2 if has_attention else 1}.conv.{parts[-1]}"
            )
        index = block * per_block + int(parts[3])
        rest = ".".join(parts[4:])
        return (
            f"{UNET}output_blocks.{index}.0.{_rename(rest, RESNET)}"
            if kind == "resnets"
            else f"{UNET}output_blocks.{index}.1.{rest}"
        )
    raise KeyError(f"no original-format name for UNet key {key}")


def vae_key(key: str, config) -> str:
    top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in top:
        return VAE + top[key]
    parts = key.split(".")
    side = parts[0]  # encoder | decoder
    if parts[1] == "mid_block":
        rest = ".".join(parts[4:])
        if parts[2] == "attentions":
            return f"{VAE}{side}.mid.attn_1.{_rename(rest, VAE_ATTENTION)}"
        return f"{VAE}{side}.mid.block_{int(parts[3]) + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
    block = int(parts[2])
    level = block if side == "encoder" else len(config.up_block_types) - 1 - block  # the decoder counts backwards
    name = "down" if side == "encoder" else "up"
    if parts[3] in ("downsamplers", "upsamplers"):
        return f"{VAE}{side}.{name}.{level}.{name}sample.conv.{parts[-1]}"
    rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
    return f"{VAE}{side}.{name}.{level}.block.{parts[4]}.{rest}"


def open_clip_state(state: dict[str, Tensor], hidden: int) -> dict[str, Tensor]:
    """text_encoder_2 (CLIPTextModelWithProjection) in open_clip's layout: fused q/k/v, transposed projection."""
    out = {}
    layers = DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"]
    for key, value in state.items():
        if key in layers:
            out[CLIP_G + layers[key]] = value.T.contiguous() if key == "text_projection.weight" else value
            continue
        if not key.startswith("text_model.encoder.layers."):
            raise KeyError(f"no open_clip name for {key}")
        rest = key.removeprefix("text_model.encoder.layers.")
        index, rest = rest.split(".", 1)
        prefix = f"{CLIP_G}transformer.resblocks.{index}."
        if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            if rest.startswith("self_attn.q_proj."):
                kind = rest.rsplit(".", 1)[1]  # weight | bias
                qkv = [state[f"text_model.encoder.layers.{index}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
                out[f"{prefix}attn.in_proj_{kind}"] = torch.cat(qkv)
            continue
        rest = rest.replace("self_attn.", "attn.").replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2")
        out[prefix + rest.replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj")] = value
    assert out[CLIP_G + "text_projection"].shape[0] == hidden
    return out


def to_single_file(pipe) -> dict[str, Tensor]:
    """The whole pipeline (UNet, VAE, both text encoders) as one original-format state dict."""
    out = {unet_key(k, pipe.unet.config): v for k, v in pipe.unet.state_dict().items()}
    for key, value in pipe.vae.state_dict().items():
        name = vae_key(key, pipe.vae.config)
        is_attention = ".mid.attn_1." in name and value.ndim == 2
        out[name] = value[:, :, None, None] if is_attention else value  # 1×1 convs in the original VAE
    for key, value in pipe.text_encoder.state_dict().items():
        out[CLIP_L + ("" if key.startswith("text_model.") else "text_model.") + key] = value
    out.update(open_clip_state(pipe.text_encoder_2.state_dict(), pipe.text_encoder_2.config.hidden_size))
    return {k: v.contiguous() for k, v in out.items()}
