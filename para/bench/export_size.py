"""File size of every export format, and the rank of every exported layer, at SDXL scale (no weights needed).

PaRa r16 (γ = 1/40, ExCA) and our LoRA r16 (ExCA) are attached to SDXL's real UNet built on the meta device, their
adapter state goes through the exporter's own code (para/export: exact factors, lora/kohya tensors, metadata), and
each file is serialized by safetensors with zero-filled tensors of those shapes: the byte counts are those of real
files (tensor data + header; the values do not change the size). The merged UNet's size is its tensor data.

    python -m para.bench.export_size [--out runs/export_size] [--dtypes fp16 fp32]      (or: make export-sizes)

writes `export_size.json` / `.md` (sizes per source, format and dtype) and `export_ranks.csv` (one row per layer).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save

from baselines.lora import Lora, LoraMethodConfig
from para.adapter import PaRa, ParaConfig
from para.core.io import write_results
from para.core.method import Method
from para.core.models import SDXL_HUB_ID
from para.core.sdxl_architecture import build_sdxl_unet_meta
from para.export.factors import LowRank, base_weight_of, low_rank_factors
from para.export.formats import DTYPES, export_metadata, format_tensors
from para.export.source import ExportSource, Subject

BASE = f"{SDXL_HUB_ID}@main"
SUBJECT = Subject("dog", "sks", "a photo of sks dog")  # a realistic header (metadata strings)


def serialized_size(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> int:
    """Bytes of the safetensors file of these tensors (meta tensors stand for zero-filled ones of their shape)."""
    real = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in tensors.items()}
    return len(save(real, metadata=metadata))


def attached(method: Method) -> tuple[dict[str, LowRank], ExportSource, dict[str, torch.Tensor]]:
    """`method` on SDXL's meta UNet: its exact factors, an export source for it, and its own saved state."""
    unet = build_sdxl_unet_meta()
    method.attach(unet)
    state = method.to_saved(method.state_dict(unet))
    source = ExportSource(Path("adapter.safetensors"), state, method.metadata(), subjects=[SUBJECT])
    return low_rank_factors(state, source.metadata, base_weight_of(unet)), source, state


def size_records(methods: dict[str, Method], dtypes: Sequence[str]) -> tuple[list[dict], pd.DataFrame]:
    records, ranks = [], {}
    for label, method in methods.items():
        factors, source, state = attached(method)
        ranks[label] = {name: f.rank for name, f in factors.items()}
        native = serialized_size(state, method.metadata())
        records.append({"source": label, "format": "adapter.safetensors (native)", "dtype": "fp32", "bytes": native})
        for fmt in ("lora", "kohya"):
            for dtype in dtypes:
                tensors, extra = format_tensors(factors, fmt, DTYPES[dtype])
                metadata = {**export_metadata(source, fmt, dtype, ranks[label]), **extra}
                records.append(
                    {"source": label, "format": fmt, "dtype": dtype, "bytes": serialized_size(tensors, metadata)}
                )
    unet = build_sdxl_unet_meta()
    for dtype in dtypes:
        data = sum(p.numel() for p in unet.parameters()) * DTYPES[dtype].itemsize
        records.append({"source": "any", "format": "merged (tensor data)", "dtype": dtype, "bytes": data})
    modules = dict(unet.named_modules())
    rows = []
    for name in next(iter(ranks.values())):
        shape = tuple(modules[name].weight.shape)
        row = {"layer": name, "weight_shape": "×".join(map(str, shape)), "d_out": shape[0]}
        rows.append(row | {f"rank {label}": layer_ranks[name] for label, layer_ranks in ranks.items()})
    return records, pd.DataFrame(rows)


def to_markdown(records: list[dict], layers: pd.DataFrame) -> str:
    df = pd.DataFrame(records)
    df["MB"] = (df["bytes"] / 1e6).round(2)
    lines = [
        "# Export file sizes at SDXL scale (counted on the meta device, no weights)",
        "",
        "PaRa r16 γ=1/40 and LoRA r16 on the 346 ExCA layers of SDXL 1.0's UNet; sizes of the safetensors files the "
        "exporter writes (MB = 10⁶ bytes). `lora`/`kohya` are exact LoRA forms at scale 1.",
        "",
        df[["source", "format", "dtype", "bytes", "MB"]].to_markdown(index=False, intfmt=","),
        "",
        "## Rank of each exported layer (layers per rank and output width; every layer: export_ranks.csv)",
        "",
    ]
    for column in [c for c in layers.columns if c.startswith("rank ")]:
        groups = Counter(zip(layers[column], layers["d_out"], strict=True))
        counts = ", ".join(f"rank {r}: {n} layers with {d} outputs" for (r, d), n in sorted(groups.items()))
        lines.append(f"- {column.removeprefix('rank ')}: {counts}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m para.bench.export_size", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/export_size", help="output folder (default: %(default)s)")
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp16", "fp32"])
    args = parser.parse_args(argv)
    methods = {"para r16": PaRa(ParaConfig(), BASE), "lora r16": Lora(LoraMethodConfig(), BASE)}
    records, layers = size_records(methods, args.dtypes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    layers.to_csv(out / "export_ranks.csv", index=False)
    write_results(out, "export_size", records, to_markdown(records, layers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
