"""Trainable parameters of PaRa vs LoRA at equal rank on SDXL, computed without weights (PAPER.md §5 item 5).

The SDXL UNet is built from its config on the meta device (no weights, no download, well under a second once
diffusers is imported). Per adapted layer with m outputs, n inputs (a conv kernel k_h × k_w, groups g):

    PaRa  m · r_eff                        r_eff = effective_rank(r, m, γ)   (γ = None: r_eff = r)
    LoRA  r · (n·k_h·k_w / g + m)          (Linear: r · (n + m)); LoRA has no γ

    python -m para.bench.param_count [--out runs/param_count] [--ranks 1 2 4 8 16 32 64] [--subsets noxattn ...]

writes `param_count.csv` (method, subset, rank, gamma, modules, trainable_params; gamma empty when disabled)
and `param_count.md` (rows rank, columns subset/method), and prints the markdown.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from torch import nn

from para.adapter import effective_rank
from para.core.io import atomic_write_text
from para.core.sdxl_architecture import SDXL_TOTAL_PARAMS, build_sdxl_unet_meta
from para.core.subsets import select_modules
from para.layers import out_features

EXCA_SUBSET = "noxattn"
EXCA_MODULES_SDXL = 346  # PAPER.md §3
PAPER_GAMMA = 0.025  # 1/40
METHODS = ("para", "lora")
COLUMNS = ["method", "subset", "rank", "gamma", "modules", "trainable_params"]
DEFAULT_RANKS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_SUBSETS = ("noxattn", "selfattn", "xattn", "attn", "full")


def total_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def lora_params(module: nn.Module, rank: int) -> int:
    """Parameters of a LoRA of rank r on one layer: A (r × n·k²) and B (m × r), as peft creates them."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return rank * (module.in_channels // module.groups * kh * kw + module.out_channels)
    if isinstance(module, nn.Linear):
        return rank * (module.in_features + module.out_features)
    raise TypeError(f"LoRA counts nn.Linear and nn.Conv2d, not {type(module).__name__}")


def para_params(module: nn.Module, rank: int, gamma: float | None) -> int:
    """Parameters of PaRa on one layer: B is m × r_eff. Raises where `PaRa.attach` would (r_eff ≥ m)."""
    width = out_features(module)
    r_eff = effective_rank(rank, width, gamma)
    if r_eff >= width:
        raise ValueError(f"PaRa rank {r_eff} does not fit a layer with {width} outputs (need rank < {width})")
    return width * r_eff


def count(model: nn.Module, subset: str | Iterable[str], method: str, rank: int, gamma: float | None = None) -> dict:
    """Adapted modules and trainable parameters of `method` ("para" | "lora") on `subset` at `rank`.

    `gamma` is PaRa's rank boundary (None = disabled); LoRA has none and refuses one.
    `trainable_params` is None when PaRa cannot be attached (a layer with ≤ r_eff outputs, e.g. SDXL's
    4-channel conv_out in `full` at r ≥ 4 without γ).
    """
    if rank <= 0:
        raise ValueError(f"rank={rank} is out of range; expected an integer > 0")
    modules = select_modules(model, subset)
    if method == "lora":
        if gamma is not None:
            raise ValueError("LoRA has no rank boundary γ; pass gamma=None")
        params = sum(lora_params(m, rank) for m in modules.values())
    elif method == "para":
        try:
            params = sum(para_params(m, rank, gamma) for m in modules.values())
        except ValueError:
            params = None
    else:
        raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    return {"modules": len(modules), "trainable_params": params}


def count_table(
    model: nn.Module, subsets: Sequence[str], ranks: Sequence[int], gamma: float = PAPER_GAMMA
) -> pd.DataFrame:
    """One row per (method, subset, rank, gamma): PaRa with γ and without, LoRA without."""
    rows = []
    for subset in subsets:
        for rank in ranks:
            for method, g in (("para", gamma), ("para", None), ("lora", None)):
                rows.append(
                    {
                        "method": method,
                        "subset": subset,
                        "rank": rank,
                        "gamma": g,
                        **count(model, subset, method, rank, g),
                    }
                )
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["gamma"] = df["gamma"].astype("Float64")
    df["trainable_params"] = df["trainable_params"].astype("Int64")
    return df


def _column_label(method: str, gamma: float | None) -> str:
    if method == "para" and not pd.isna(gamma):
        return f"para γ={gamma:g}"
    return method


def to_markdown(df: pd.DataFrame, total: int, exca_modules: int | None) -> str:
    """Readable pivot: rows rank, columns subset / method, plus the model totals."""
    variants = list(dict.fromkeys(_column_label(m, g) for m, g in zip(df["method"], df["gamma"], strict=True)))
    subsets = list(dict.fromkeys(df["subset"]))
    ranks = sorted(set(df["rank"]))
    cell = {
        (s, _column_label(m, g), r): p
        for m, s, r, g, p in zip(
            df["method"], df["subset"], df["rank"], df["gamma"], df["trainable_params"], strict=True
        )
    }
    header = ["rank"] + [f"{s} {v}" for s in subsets for v in variants]
    lines = [
        "# Trainable parameters, PaRa vs LoRA, SDXL UNet",
        "",
        f"Total UNet parameters: {total:,}. ExCA (`{EXCA_SUBSET}`) modules: "
        + (f"{exca_modules}." if exca_modules is not None else "not counted."),
        "",
        "Modules per subset: "
        + ", ".join(f"`{s}` {int(df.loc[df['subset'] == s, 'modules'].iloc[0])}" for s in subsets)
        + ".",
        "",
        "PaRa: Σ d_out·r_eff, r_eff = min(r, ⌊d_out·γ⌋) (≥ 1). LoRA: Σ r·(d_in·k² + d_out), no γ. "
        "“–”: PaRa cannot be attached (a layer has ≤ r outputs).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---:"] * len(header)) + "|",
    ]
    for r in ranks:
        values = []
        for s in subsets:
            for v in variants:
                p = cell.get((s, v, r))
                values.append("–" if p is None or pd.isna(p) else f"{int(p):,}")
        lines.append(f"| {r} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def lora_peft_count(model: nn.Module, subset: str | Iterable[str], rank: int) -> int:
    """LoRA parameters that peft actually injects on exactly the subset's modules (changes `model` in place)."""
    from peft import LoraConfig, inject_adapter_in_model

    names = select_modules(model, subset)
    pattern = "^(?:" + "|".join(re.escape(n) for n in names) + ")$"  # peft: re.fullmatch on a str target
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=pattern), model)
    return sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)


def method_table(model: nn.Module) -> pd.DataFrame:
    """Trainable parameters of every registered method with its YAML defaults, attached to (a copy of) `model`."""
    import copy

    from para.run.config import compose_config
    from para.run.registry import METHODS

    rows = []
    for name, method_cls in METHODS.items():
        cfg = compose_config(f"method={name}", "run_dir=unused").method
        unet = copy.deepcopy(model)  # methods change the UNet in place
        params = method_cls(cfg, "sdxl").attach(unet)
        rows.append(
            {
                "method": name,
                "subset": cfg.get("subset", "all"),
                "rank": cfg.get("rank") or "–",
                "trainable_params": sum(p.numel() for p in params),
            }
        )
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m para.bench.param_count", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/param_count", help="output folder (default: %(default)s)")
    parser.add_argument("--ranks", type=int, nargs="+", default=list(DEFAULT_RANKS))
    parser.add_argument("--subsets", nargs="+", default=list(DEFAULT_SUBSETS))
    parser.add_argument("--gamma", type=float, default=PAPER_GAMMA, help="PaRa's rank boundary for the γ rows")
    args = parser.parse_args(argv)
    bad = [r for r in args.ranks if r <= 0]
    if bad:
        parser.error(f"--ranks {bad} out of range; expected integers > 0")
    if not 0 < args.gamma <= 1:
        parser.error(f"--gamma {args.gamma} out of range; expected (0, 1]")

    model = build_sdxl_unet_meta()
    total = total_params(model)
    if total != SDXL_TOTAL_PARAMS:
        print(
            f"warning: the SDXL UNet built here has {total:,} parameters, expected {SDXL_TOTAL_PARAMS:,}",
            file=sys.stderr,
        )
    try:
        df = count_table(model, args.subsets, args.ranks, args.gamma)
    except ValueError as err:  # unknown subset name
        parser.error(str(err))
    exca = len(select_modules(model, EXCA_SUBSET))
    md = to_markdown(df, total, exca)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "param_count.csv", df.to_csv(index=False))  # whole files: parallel makes may race
    methods = method_table(model)
    atomic_write_text(out / "methods.csv", methods.to_csv(index=False))
    md += "\n\n## Every method with its defaults (conf/method/*.yaml), SDXL UNet\n\n" + methods.to_markdown(
        index=False, intfmt=","
    )
    atomic_write_text(out / "param_count.md", md)
    print(md)
    print(f"wrote {out / 'param_count.csv'} and {out / 'param_count.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
