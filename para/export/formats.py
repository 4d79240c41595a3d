"""LoRA file formats of the exact factors (para/export/factors.py), and the metadata every exported file carries.

    lora   diffusers/peft: `unet.<module>.lora_A.weight` (down) / `.lora_B.weight` (up), and diffusers' own
           `lora_adapter_metadata` (the peft LoraConfig: per-layer ranks, alpha = rank) — what
           `pipe.load_lora_weights(path)` reads.
    kohya  `lora_unet_<module, dots as underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha` (= rank, so
           the scale alpha/rank is 1): the format of kohya's sd-scripts (networks/lora.py), which ComfyUI,
           A1111/Forge and InvokeAI read, and diffusers converts (`_convert_non_diffusers_lora_to_diffusers`).

Module paths are diffusers' (`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`), which ComfyUI's key map
lists for an SDXL UNet next to the original `input_blocks` names (comfy/lora.py `model_lora_keys_unet`). Every file
is at scale 1: loaded at strength 1 it is the adapter.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import torch
from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
from torch import Tensor

from para.export.factors import EXACT, LORA_METHODS, LowRank
from para.export.merged import MERGED_FILES
from para.export.source import EXPORT_FORMAT, ExportSource

FORMATS = ("lora", "kohya", "merged")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
EXPORT_VERSION = "1"


def kohya_key(module: str) -> str:
    """kohya's LoRA name of a UNet module: `lora_unet_` + its path with dots as underscores (networks/lora.py)."""
    return "lora_unet_" + module.replace(".", "_")


def lora_config(ranks: dict[str, int]) -> dict:
    """peft LoraConfig values that give every layer scale 1 (alpha = its rank), however the ranks differ."""
    common = Counter(ranks.values()).most_common(1)[0][0]
    # anchored, escaped patterns: peft matches a pattern against the end of a module name
    pattern = {f"^{re.escape(name)}": rank for name, rank in ranks.items() if rank != common}
    return {
        "r": common,
        "lora_alpha": common,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": sorted(ranks),
    }


def peft_tensors(factors: dict[str, LowRank], dtype: torch.dtype, prefix: str = "unet.") -> dict[str, Tensor]:
    """The factors under peft's names (lora_A = down, lora_B = up), conv factors as conv kernels."""
    tensors = {}
    for name, f in factors.items():
        tensors[f"{prefix}{name}.lora_A.weight"] = f.down_weight().to(dtype).contiguous()
        tensors[f"{prefix}{name}.lora_B.weight"] = f.up_weight().to(dtype).contiguous()
    return tensors


def kohya_tensors(factors: dict[str, LowRank], dtype: torch.dtype) -> dict[str, Tensor]:
    """The factors under kohya's names; `alpha` = rank (kohya stores it as a 0-d tensor of the file's dtype)."""
    tensors = {}
    for name, f in factors.items():
        key = kohya_key(name)
        tensors[f"{key}.lora_down.weight"] = f.down_weight().to(dtype).contiguous()
        tensors[f"{key}.lora_up.weight"] = f.up_weight().to(dtype).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(float(f.rank), dtype=dtype)
    return tensors


def format_tensors(factors: dict[str, LowRank], fmt: str, dtype: torch.dtype) -> tuple[dict[str, Tensor], dict]:
    """(tensors, format-specific metadata) of a `lora` or `kohya` file."""
    ranks = {name: f.rank for name, f in factors.items()}
    if fmt == "lora":
        config = {f"unet.{k}": v for k, v in lora_config(ranks).items()}
        return peft_tensors(factors, dtype), {LORA_ADAPTER_METADATA_KEY: json.dumps(config, sort_keys=True)}
    if fmt == "kohya":
        # No diffusers LoRA metadata here: diffusers refuses a file with both it and kohya's alpha tensors.
        return kohya_tensors(factors, dtype), {"ss_network_module": "networks.lora"}
    raise ValueError(f"unknown LoRA format {fmt!r}; expected lora or kohya")


def export_metadata(source: ExportSource, fmt: str, dtype: str, ranks: dict[str, int]) -> dict[str, str]:
    """What every exported file says about itself (safetensors metadata: strings only)."""
    config = source.config
    subjects = [vars(s) for s in source.subjects]
    metadata = {
        "format": "pt",
        "para_format": EXPORT_FORMAT,
        "para_format_version": EXPORT_VERSION,
        "para_export_format": fmt,
        "method": str(source.method),
        "base_model": str(source.base_model),
        "exact": EXACT.get(source.method, f"merged from {source.method}: the trained weights baked into the UNet"),
        "scale": "1",
        "dtype": dtype,
        "ranks": json.dumps(ranks, sort_keys=True),
        "rank_max": str(max(ranks.values(), default="n/a")),
        "gamma": json.dumps(config.get("gamma")),
        "subset": json.dumps(config.get("subset")),
        "config": json.dumps(config, sort_keys=True),
        "source": str(source.adapter),
        "subjects": json.dumps(subjects),
        "subject": " + ".join(s.subject for s in source.subjects),
        "token": " + ".join(s.token for s in source.subjects),
        "instance_prompt": " + ".join(s.instance_prompt for s in source.subjects),
    }
    if source.method in LORA_METHODS:
        metadata["lora_scale_baked"] = source.metadata.get("lora_scale", "1.0")
    if "mode" in config:
        metadata["mode"] = config["mode"]
    if "sdxl" in str(source.base_model) or "stable-diffusion-xl" in str(source.base_model):
        metadata["modelspec.architecture"] = "stable-diffusion-xl-v1-base/lora"  # what UIs read to tell SDXL LoRAs
        metadata["ss_base_model_version"] = "sdxl_base_v1-0"
    return metadata


def check_out(out: Path, fmt: str, overwrite: bool, protected: list[Path], run_dirs: list[Path] = ()) -> None:
    """Refuse to replace what the user did not ask to replace, and never a source file or write into a run folder
    (before any work)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {list(FORMATS)}")
    if any(out.resolve() == p.resolve() for p in protected):
        raise FileExistsError(f"--out {out} is the adapter being exported; choose another path")
    inside = [r for r in run_dirs if out.resolve() == r.resolve() or r.resolve() in out.resolve().parents]
    if inside:
        beside = inside[0].parent / (inside[0].name + ("-unet" if fmt == "merged" else ".safetensors"))
        raise FileExistsError(
            f"--out {out} is in the run folder {inside[0]}, which holds the harness's own files; write the export "
            f"beside it, e.g. --out {beside}"
        )
    if fmt == "merged":
        if out.is_file():
            raise FileExistsError(f"{out} is a file; the merged export writes a diffusers UNet folder")
        held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        others = [name for name in held if name not in MERGED_FILES]
        if others:  # --overwrite would replace two files among someone else's
            raise FileExistsError(
                f"{out} holds {', '.join(others[:6])}, not (only) a merged UNet; the merged export writes "
                f"{' and '.join(MERGED_FILES)} into a folder of its own: choose a new or empty folder"
            )
        if held and not overwrite:
            raise FileExistsError(f"{out} holds a merged UNet; pass --overwrite (overwrite=True) to replace it")
        return
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: a {fmt} export is one .safetensors file; name it <something>.safetensors")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; the {fmt} export writes one .safetensors file")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite (overwrite=True) to replace it")
