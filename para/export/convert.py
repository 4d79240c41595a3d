"""One export: source (run folder or adapter file) → exact factors on the base weights → a file in a format."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from para.core.base_unet import load_unet
from para.core.devices import check_device
from para.core.io import atomic_save_safetensors
from para.core.method import Method
from para.core.models import resolve_device
from para.export.factors import EXACT, NotExportable, base_weight_of, check_exportable, low_rank_factors
from para.export.formats import DTYPES, check_out, export_metadata, format_tensors
from para.export.merged import bake, write_merged_unet, write_unet
from para.export.source import ExportSource, check_pipeline_base, open_source, require_model, trained_dtype


def export(
    source: str | Path | ExportSource,
    out: str | Path,
    fmt: str = "lora",
    dtype: str = "fp16",
    *,
    overwrite: bool = False,
    pipe: Any = None,
    base_model: str | None = None,
    device: str = "cpu",
    methods: Mapping[str, type[Method]] | None = None,
) -> Path:
    """Write `source`'s adapter to `out` as a `lora` / `kohya` file or a `merged` UNet folder; returns `out`.

    Args:
        source: a run folder, or an adapter `.safetensors` of this project (a combined PaRa adapter included).
        out: the file (lora, kohya: `*.safetensors`) or folder (merged) to write; never replaced unless `overwrite`.
        fmt: `lora` (diffusers/peft keys), `kohya` (ComfyUI, A1111/Forge, InvokeAI, sd-scripts) or `merged`.
        dtype: `fp16`, `bf16` or `fp32` for the written tensors (the factors are computed in float32).
        pipe: a loaded base pipeline to take W0 from instead of rebuilding the run's base model (its base model
            must be the adapter's: see `check_pipeline_base`; `merged` works on a copy of its UNet).
        base_model: `pipe`'s base-model id when its `name_or_path` does not say it.
        device: where the base model's UNet is rebuilt when `pipe` is None.
        methods: the method classes by name (para.run.registry.METHODS): `merged` bakes any of them into the UNet,
            also those without an exact LoRA form (DreamBooth, SVDiff, LoHa, LoKr, OFT).
    """
    methods = methods or {}
    src = source if isinstance(source, ExportSource) else open_source(source)
    baked = fmt == "merged" and src.method not in EXACT  # no LoRA form: the method itself is baked into the UNet
    method_class = methods.get(src.method)
    if not baked or method_class is None:  # a LoRA-format export, or a method unknown here: why it cannot be
        check_exportable(src.method)
    out = Path(out)
    check_out(out, fmt, overwrite, [src.adapter], src.run_dirs)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {list(DTYPES)}")
    if pipe is None:  # W0 only: the UNet alone (no text encoders, no VAE), in the dtype the run trained on
        check_device("--device", device)
        load_dtype = trained_dtype(src)
        if fmt == "merged" and load_dtype not in (None, DTYPES[dtype]):
            load_dtype = torch.float32  # every weight is written: rounded once, to the file's dtype
        unet = load_unet(require_model(src), resolve_device(device), load_dtype)
    else:
        check_pipeline_base(src.adapter, src.base_model, pipe, base_model)
        unet = copy.deepcopy(pipe.unet) if fmt == "merged" else pipe.unet
    if baked:
        return write_unet(_baked(unet, src, method_class), out, DTYPES[dtype], export_metadata(src, fmt, dtype, {}))
    factors = low_rank_factors(src.tensors, src.metadata, base_weight_of(unet))
    metadata = export_metadata(src, fmt, dtype, {name: f.rank for name, f in factors.items()})
    if fmt == "merged":
        return write_merged_unet(unet, factors, out, DTYPES[dtype], metadata)
    tensors, format_metadata = format_tensors(factors, fmt, DTYPES[dtype])
    return atomic_save_safetensors(tensors, out, metadata={**metadata, **format_metadata})


def _baked(unet: Any, src: ExportSource, method_class: type[Method]) -> Any:
    """The base UNet with the source's method attached, its adapter loaded and baked into plain weights."""
    if src.method == "dreambooth" and any(not key.startswith("unet.") for key in src.tensors):
        raise NotExportable(
            f"{src.adapter} also holds trained text encoders (method.train_text_encoder=true); a merged UNet "
            "cannot carry them: load the adapter file itself (para.core.method / baselines.dreambooth)"
        )
    method = method_class(src.config, str(src.base_model))
    method.attach(unet)
    method.load_state_dict(unet, method.from_saved(src.tensors))
    method.end_training(unet)
    return bake(unet, method)
