"""Ablations (PAPER.md §5.1): PaRa rank r, γ on/off, layer subset, init × learning rate, a PaRa/LoRA steps curve.

    python -m experiments.ablations [hydra overrides]          # parameters: conf/experiment/ablations.yaml

Every cell is an ordinary training run: the sweeps below are launched as `python run.py -m +experiment=ablations
...` (Hydra multirun; finished cells are skipped, failed cells are reported and do not stop a sweep). Then
every run under `<out>/` is collected with `eval.table.collect_runs` into one pandas table: means over subjects
(and seeds) per setting → `ablations.{csv,md}`, `runs.csv` (every cell, with its status), `rank.png`,
`subset.png`, `init.png`, `steps.png` (line plots of DINO, CLIP-I, CLIP-T), `grid.png` and `provenance.json`.

The init × lr sweep exists because PaRa's Q = qr(B) ignores the scale of B's columns: with Adam, whose steps
have a size set by `lr` whatever the gradient's scale, B's column norm (set by the init: `init_std`·√d_out for
`gaussian`, 1 for `weakest`) divides the rate at which Q turns. Comparing inits at one lr compares learning
rates too (docs/methods.md).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eval.plots import category_axis, power_of_two_axis, score_axis, styles
from eval.protocols import Protocol
from eval.score import protocol_named
from eval.table import collect_runs
from experiments.common import REPO, Experiment, compose, load_experiment, main_entry, merge_overrides
from experiments.report import (
    banners,
    flags,
    label_grid,
    open_images,
    protocol_banner,
    write_provenance,
    write_table,
)
from para.core.io import read_json

log = logging.getLogger("experiments.ablations")
COSTS = ["trainable_params", "train_seconds"]
# The columns naming a cell's setting, per ablation: the x axis last (the plots' x, the others are lines).
KEYS = {"rank": ["gamma", "rank"], "subset": ["subset"], "init": ["init", "lr"], "steps": ["method", "steps"]}


@dataclass
class Params:
    name: str = "ablations"
    out: str = "runs/ablations"
    subjects: list[str] = field(default_factory=lambda: ["dog", "cat", "backpack", "teapot"])
    para_steps: int = 200
    ranks: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    gammas: list[float | None] = field(default_factory=lambda: [0.025, None])
    subsets: list[str] = field(default_factory=lambda: ["noxattn", "selfattn", "attn", "xattn", "full"])
    inits: list[str] = field(default_factory=lambda: ["gaussian", "weakest"])
    lrs: list[float] = field(default_factory=lambda: [3e-5, 1e-4, 3e-4, 1e-3])
    steps_curve: list[int] = field(default_factory=lambda: [50, 100, 200, 400, 700, 1000])
    curve_methods: list[str] = field(default_factory=lambda: ["para", "lora"])


def _values(values: Sequence[Any]) -> str:
    """A Hydra sweep value: `1,2,4` (None → null)."""
    return ",".join("null" if v is None else str(v) for v in values)


def sweeps(p: Params) -> dict[str, list[str]]:
    """The multirun overrides of each ablation (empty lists skip an ablation)."""
    subjects = f"subject={_values(p.subjects)}"
    plan = {
        "rank": [
            "method=para",
            subjects,
            f"steps={p.para_steps}",
            f"method.rank={_values(p.ranks)}",
            f"method.gamma={_values(p.gammas)}",
        ],
        "subset": ["method=para", subjects, f"steps={p.para_steps}", f"method.subset={_values(p.subsets)}"],
        "init": [
            "method=para",
            subjects,
            f"steps={p.para_steps}",
            f"method.init={_values(p.inits)}",
            f"method.lr={_values(p.lrs)}",
        ],
        "steps": [f"method={_values(p.curve_methods)}", subjects, f"steps={_values(p.steps_curve)}"],
    }
    empty = {
        "rank": not (p.ranks and p.gammas),
        "subset": not p.subsets,
        "init": not (p.inits and p.lrs),
        "steps": not (p.steps_curve and p.curve_methods),
    }
    return {name: overrides for name, overrides in plan.items() if p.subjects and not empty[name]}


def run_sweep(exp: Experiment, overrides: list[str]) -> int:
    """`python run.py -m +experiment=ablations <user overrides> <sweep>`; returns its exit status."""
    records = f"hydra.callbacks.sweep_report.records_dir={exp.out / '.sweeps'}"
    args = ["-m", "+experiment=ablations", *merge_overrides(exp.overrides, [*overrides, records])]
    log.info("sweep: python run.py %s", shlex.join(args))
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], check=False).returncode


def gamma_label(method: str, gamma: float | None) -> str:
    if method not in ("para", "para_authors"):
        return "n/a"
    return "off" if gamma is None else f"{gamma:g}"


def collect(out: Path) -> pd.DataFrame:
    """Every run under `out` (eval.table's reader, which has its lr) plus its rank, γ, subset and init."""
    runs, _ = collect_runs(out)
    settings = []
    for path, method in zip(runs["path"], runs["method"], strict=True):
        cfg = read_json(Path(path) / "metrics.json").get("run_info", {}).get("method", {})
        subset = cfg.get("subset")
        settings.append(
            {
                "rank": cfg.get("rank"),
                "gamma": gamma_label(method, cfg.get("gamma")),
                "subset": subset if isinstance(subset, str) else "+".join(map(str, subset or [])),
                "init": cfg.get("init", "n/a"),
            }
        )
    return pd.concat([runs, pd.DataFrame(settings, index=runs.index)], axis=1)  # lr: eval.table's reader has it


def select(runs: pd.DataFrame, p: Params, base: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The finished, scored runs of each ablation (one run may serve several: r16, γ on, ExCA, 200 steps)."""
    ok = runs[(runs["status"] == "finished") & runs["has_scores"] & runs["subject"].isin(p.subjects)]
    para = ok[ok["method"] == "para"]
    para = para[para["steps"] == p.para_steps]
    at_base = (para["rank"] == base["para"]["rank"]) & (para["gamma"] == base["para"]["gamma"])
    base_subset = para["subset"] == base["para"]["subset"]
    base_optim = (para["init"] == base["para"]["init"]) & (para["lr"] == base["para"]["lr"])  # not the init sweep's
    gammas = [gamma_label("para", g) for g in p.gammas]
    curve = ok[ok["method"].isin(p.curve_methods) & ok["steps"].isin(p.steps_curve)]
    keys = ("rank", "gamma", "subset", "init", "lr")
    curve = (
        curve[[all(row[k] == base[row["method"]][k] for k in keys) for _, row in curve.iterrows()]]
        if len(curve)
        else curve
    )
    return {
        "rank": para[base_subset & base_optim & para["rank"].isin(p.ranks) & para["gamma"].isin(gammas)],
        "subset": para[at_base & base_optim & para["subset"].isin(p.subsets)],
        "init": para[at_base & base_subset & para["init"].isin(p.inits) & para["lr"].isin(p.lrs)],
        "steps": curve,
    }


def summarize(selected: dict[str, pd.DataFrame], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per ablation setting: means of `metrics` (the protocol's scores) and the costs over subjects and
    seeds, with the number of runs behind them."""
    metrics = list(metrics)
    tables = []
    for ablation, runs in selected.items():
        if runs.empty:
            continue
        keys = KEYS[ablation]
        grouped = runs.groupby(keys, sort=True)
        table = grouped[metrics + COSTS].mean().reset_index()
        table.insert(0, "ablation", ablation)
        if "method" not in keys:
            table.insert(1, "method", "+".join(sorted(runs["method"].unique())))
        table["n_runs"] = grouped.size().values
        table["n_subjects"] = grouped["subject"].nunique().values
        tables.append(table)
    if not tables:
        return pd.DataFrame(columns=["ablation", *metrics])
    columns = ["ablation", "method", "rank", "gamma", "subset", "init", "lr", "steps", "n_runs", "n_subjects"]
    columns += [*metrics, *COSTS]
    table = pd.concat(tables, ignore_index=True)
    for column in ("rank", "steps", "trainable_params"):  # integers, missing where an ablation does not vary them
        if column in table:
            table[column] = table[column].round().astype("Int64")
    return table[[c for c in columns if c in table.columns]]


def plot(table: pd.DataFrame, ablation: str, path: Path, banner: str | None, protocol: Protocol) -> None:
    """The protocol's subject scores and its text alignment (DreamBench: DINO, CLIP-I, CLIP-T) against the
    ablation's x (rank, subset, steps), one line per remaining key; `banner` heads the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table[table["ablation"] == ablation]
    *hue, x = KEYS[ablation]
    metrics = [*protocol.reference_keys, protocol.alignment]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.8))
    groups = rows.groupby(hue, sort=True) if hue else [((ablation,), rows)]
    for (label, group), (style, look) in zip(groups, styles(), strict=False):  # styles() cycles
        values = label if isinstance(label, tuple) else (label,)
        name = ", ".join(f"{h}={v}" for h, v in zip(hue, values, strict=False))
        # subsets are categories: markers only, a line between them would suggest an order
        fmt = style[0] if x == "subset" else style
        for ax, metric in zip(axes, metrics, strict=True):
            xs = group[x].astype(str) if x == "subset" else group[x]
            ax.plot(xs, group[metric], fmt, label=name or None, **look)
    for ax, metric in zip(axes, metrics, strict=True):
        ax.set_xlabel(x)
        ax.set_ylabel(protocol.labels.get(metric, metric))
        score_axis(ax)
        if x == "rank":
            power_of_two_axis(ax, rows[x].dropna().astype(int).tolist())
        if x == "lr":
            ax.set_xscale("log")
        if x == "subset":
            category_axis(ax, rows[x].astype(str).unique().tolist())
    if hue:  # one legend for the three panels, below them, instead of one covering each panel's data
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.suptitle((f"{banner}: " if banner else "") + f"{ablation} ablation", fontsize=9 if banner else None)
    fig.tight_layout(rect=(0, 0.08 if hue else 0, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grid(selected: dict[str, pd.DataFrame], subject: str, seed: int, prompts: int = 4):
    """Image 0 of the first prompts, one row per setting, for one subject."""
    rows = []
    for ablation, runs in selected.items():
        for _, run in (
            runs[(runs["subject"] == subject) & (runs["seed"] == seed)].sort_values(KEYS[ablation]).iterrows()
        ):
            samples = sorted((Path(run["path"]) / "samples").glob("p*_i00.png"))[:prompts]
            label = f"{ablation}: " + ", ".join(f"{k}={run[k]}" for k in KEYS[ablation])
            rows.append((label, open_images(samples)))
    rows = [r for r in rows if r[1]]
    return label_grid(rows, [f"prompt {i}" for i in range(prompts)]) if rows else None


def run(argv: Sequence[str]) -> pd.DataFrame:
    """Run the sweeps, then collect every cell under `<out>/` into the table and plots; returns the table."""
    exp = load_experiment("ablations", Params, argv)
    p = exp.params
    statuses = {name: run_sweep(exp, overrides) for name, overrides in sweeps(p).items()}
    base = {}
    for method in p.curve_methods + ["para"]:
        mcfg = compose(["+experiment=ablations", *merge_overrides(exp.overrides, [f"method={method}"])]).method
        subset = mcfg.subset if isinstance(mcfg.subset, str) else "+".join(mcfg.subset)
        base[method] = {
            "rank": mcfg.get("rank"),
            "gamma": gamma_label(method, mcfg.get("gamma")),
            "subset": subset,
            "init": mcfg.get("init", "n/a"),
            "lr": mcfg.lr,
        }

    runs = collect(exp.out)
    selected = select(runs, p, base)
    protocol = protocol_named(exp.cfg.eval.backbones)
    table = summarize(selected, [k for k in protocol.score_keys if k in runs.columns])
    pretrained = runs["backbones_pretrained"].dropna()
    flag = flags(exp, bool(pretrained.astype(bool).all()) if len(pretrained) else None)
    shown = banners(flag) + protocol_banner(exp)
    unusable = runs[(runs["status"] != "finished") | ~runs["has_scores"].astype(bool)]
    failed = {k: v for k, v in statuses.items() if v != 0}
    notes = [
        f"means over subjects {p.subjects} and seeds; n_runs = cells behind each row. Rank/γ/subset/init cells at "
        f"{p.para_steps} steps; fixed values elsewhere: {base}",
        *([f"{len(unusable)} run(s) not finished or not scored: see runs.csv"] if len(unusable) else []),
        *([f"sweeps that reported failed cells: {sorted(failed)}"] if failed else []),
    ]
    exp.out.mkdir(parents=True, exist_ok=True)
    write_table(runs.drop(columns=["eval"]).assign(**flag), exp.out, "runs", "Ablations: every cell", shown)
    write_table(table.assign(**flag), exp.out, "ablations", "Ablations", [*shown, *notes])
    banner = "RANDOM BACKBONES / WEIGHTS — not comparable with any paper" if banners(flag) else protocol.banner
    for ablation in KEYS:
        if (table["ablation"] == ablation).any():
            plot(table, ablation, exp.out / f"{ablation}.png", banner, protocol)
    image = grid(selected, p.subjects[0], exp.cfg.seed) if p.subjects else None
    if image is not None:
        image.save(exp.out / "grid.png")
    write_provenance(
        exp,
        exp.out,
        flags=flag,
        sweeps={k: {"overrides": v, "exit_status": statuses[k]} for k, v in sweeps(p).items()},
    )
    if failed:
        raise RuntimeError(f"ablation sweeps {sorted(failed)} had failed cells; the tables hold the finished ones")
    return table


if __name__ == "__main__":
    main_entry(run)
