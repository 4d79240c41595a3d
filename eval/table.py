"""Table 1 from run folders: `python -m eval.table --runs runs/table1 --out runs/table1 [--methods para lora]`.

Collects every `metrics.json` under `--runs`, averages each (method, subject) cell over seeds, then reports
per method the mean over subjects with a 95% bootstrap interval over subjects (`eval.stats`), a live/object
split, the paired difference of two methods, a real-images reference row, the failed or missing cells, and a
text-alignment vs subject-fidelity plot. Writes `table1.csv`, `table1.md`, `table1_by_kind.csv`,
`table1_paired.csv`, `table1_runs.csv`, `failed_cells.csv` and `tradeoff.png` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eval.options import RANDOM_BANNER, EvalOptions
from eval.stats import paired_difference, subject_means, summarize
from para.core.io import atomic_write_bytes, atomic_write_text

SCORES = ["dino", "clip_i", "clip_t", "clip_score", "lpips", "ssim"]
COSTS = ["trainable_params", "train_seconds", "peak_memory_mb"]
COLUMNS = SCORES + COSTS
LABELS = {
    "dino": "DINO",
    "clip_i": "CLIP-I",
    "clip_t": "CLIP-T",
    "clip_score": "CLIP score",
    "lpips": "LPIPS",
    "ssim": "SSIM",
    "trainable_params": "params",
    "train_seconds": "train s",
    "peak_memory_mb": "peak MB",
}
BANNER = f"WARNING: {RANDOM_BANNER} (CLIP/DINO scores come from random weights; do NOT compare them with any paper)"
REAL = "real_images"
RUN_COLUMNS = [
    "method",
    "subject",
    "kind",
    "steps",
    "seed",
    "status",
    *COSTS,
    "has_scores",
    "backbones_pretrained",
    "data_root",
    "eval",
    "path",
    *SCORES,
]


FAILED_COLUMNS = ["method", "subject", "seed", "status", "reason", "path"]


def _failure(*values: Any) -> dict[str, Any]:
    return dict(zip(FAILED_COLUMNS, values, strict=True))


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def read_run(path: Path) -> dict[str, Any]:
    """One table row from a `metrics.json` (missing fields become None / NaN, never an exception)."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    scores = data.get("scores") or {}
    row = {
        "method": data.get("method") or _get(data, "run_info", "method", "name"),
        "subject": data.get("subject") or _get(data, "run_info", "subject", "name"),
        "kind": _get(data, "run_info", "subject", "kind"),
        "steps": data.get("steps"),
        "seed": data.get("seed"),
        "status": data.get("status"),
        "trainable_params": data.get("trainable_params"),
        "train_seconds": _get(data, "train_info", "wall_seconds"),
        "peak_memory_mb": _get(data, "train_info", "peak_memory_mb"),
        "has_scores": bool(scores),
        "backbones_pretrained": scores.get("backbones_pretrained_all") if scores else None,
        "data_root": _get(data, "run_info", "data", "root"),
        "eval": _get(data, "run_info", "eval"),
        "path": str(path.parent),
    }
    row.update({k: scores.get(k) for k in SCORES})
    return row


def _cell_of(path: Path) -> tuple[str | None, str | None, int | None]:
    """(method, subject, seed) of `<method>/<subject>/steps<N>-seed<k>/metrics.json`, as far as it parses."""
    match = re.fullmatch(r"steps\d+-seed(\d+)", path.parent.name)
    seed = int(match.group(1)) if match else None
    return path.parent.parent.parent.name or None, path.parent.parent.name or None, seed


def collect_runs(root: Path | None, cells: Sequence[Path] | None = None) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """All runs under `root` (skipping `.cache`), or exactly the `cells` given (a table's own runs, so other
    experiments' runs under the same root never leak into it); unreadable or missing files as problem records."""
    rows, problems = [], []
    paths = [Path(c) for c in cells] if cells else sorted(root.rglob("metrics.json"))
    for path in paths:
        if ".cache" in path.parts:
            continue
        if not path.is_file():
            problems.append(_failure(*_cell_of(path), "missing", "no metrics.json", str(path.parent)))
            continue
        try:
            rows.append(read_run(path))
        except (OSError, ValueError) as err:
            reason = f"{type(err).__name__}: {err}"
            problems.append(_failure(None, None, None, "unreadable", reason, str(path.parent)))
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS)
    for column in COLUMNS:
        if column in runs:
            runs[column] = pd.to_numeric(runs[column], errors="coerce")
    return runs, problems


def failed_cells(runs: pd.DataFrame, methods: Sequence[str], problems: list[dict[str, Any]]) -> pd.DataFrame:
    """Runs not finished or without scores, and (method, subject) cells with no run at all."""
    records = list(problems)
    for row in runs.itertuples(index=False):
        if row.status != "finished" or not row.has_scores:
            reason = f"status={row.status}" if row.status != "finished" else "finished but not scored"
            records.append(_failure(row.method, row.subject, row.seed, row.status, reason, row.path))
    present = set(zip(runs["method"], runs["subject"], strict=True))
    for method in methods:
        for subject in sorted(runs["subject"].dropna().unique()):
            if (method, subject) not in present:
                records.append(_failure(method, subject, None, "missing", "no run folder", None))
    return pd.DataFrame(records, columns=FAILED_COLUMNS)


def real_rows(runs: pd.DataFrame, backbones: str | None, cache_dir: Path | None) -> pd.DataFrame:
    """Leave-one-out DINO / CLIP-I among each subject's real photos (one row per subject)."""
    from eval.backbones import load_backbones
    from eval.score import real_reference

    first = runs.iloc[0]
    pretrained_all = bool(runs["backbones_pretrained"].fillna(False).astype(bool).all())
    mode = backbones or ("pretrained" if pretrained_all else "random")
    models = load_backbones(EvalOptions.from_any(first["eval"], backbones=mode))
    rows = []
    for (subject, root), group in runs.groupby(["subject", "data_root"], sort=True):
        values = real_reference(root, subject, models, cache_dir)
        rows.append(
            {
                "method": REAL,
                "subject": subject,
                "kind": group["kind"].iloc[0],
                **values,
                "backbones_pretrained": models.dino.pretrained and models.clip.pretrained,
            }
        )
    return pd.DataFrame(rows)


def _cell(row: pd.Series, column: str) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if column == "trainable_params":
        return f"{value:,.0f}"
    digits = 0 if column in ("train_seconds", "peak_memory_mb") else 3
    lo, hi = row.get(f"{column}_lo"), row.get(f"{column}_hi")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def markdown_table(frame: pd.DataFrame, keys: Sequence[str], columns: Sequence[str]) -> str:
    """A GitHub markdown table; metric cells read `mean [lo, hi]`."""
    header = [*keys, *(LABELS.get(c, c) for c in columns), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in frame.iterrows():
        cells = [str(row[k]) for k in keys] + [_cell(row, c) for c in columns] + [str(row.get("n_subjects", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_tradeoff(table: pd.DataFrame, real: pd.DataFrame | None, path: Path, banner: bool) -> None:
    """x = CLIP-T (text alignment), y = DINO (subject fidelity), one point per method with its intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.plots import score_axis

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for _, row in table.iterrows():
        xerr = [
            [max(row["clip_t"] - row["clip_t_lo"], 0) if not math.isnan(row["clip_t_lo"]) else 0],
            [max(row["clip_t_hi"] - row["clip_t"], 0) if not math.isnan(row["clip_t_hi"]) else 0],
        ]
        yerr = [
            [max(row["dino"] - row["dino_lo"], 0) if not math.isnan(row["dino_lo"]) else 0],
            [max(row["dino_hi"] - row["dino"], 0) if not math.isnan(row["dino_hi"]) else 0],
        ]
        ax.errorbar(row["clip_t"], row["dino"], xerr=xerr, yerr=yerr, fmt="o", capsize=3, label=row["method"])
        # the name beside its point: colours alone are hard to match when points sit close together
        ax.annotate(row["method"], (row["clip_t"], row["dino"]), xytext=(5, 5), textcoords="offset points", fontsize=8)
    if real is not None and len(real) and not math.isnan(real["dino"].mean()):
        ax.axhline(real["dino"].mean(), ls="--", color="grey", label="real images (DINO)")
    ax.set_xlabel("CLIP-T (text alignment) →")
    ax.set_ylabel("DINO (subject fidelity) →")
    score_axis(ax, "x")
    score_axis(ax, "y")
    ax.set_title("RANDOM BACKBONES — not comparable" if banner else "Text alignment vs subject fidelity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, dpi=150, format="png"))
    plt.close(fig)


def build(
    runs_root: Path | None,
    out: Path,
    methods: Sequence[str] | None = None,
    pair: Sequence[str] = ("para", "lora"),
    real: bool = True,
    backbones: str | None = None,
    cache_dir: Path | None = None,
    cells: Sequence[Path] | None = None,
) -> dict[str, Any]:
    """Write all table files into `out`; returns the frames and the markdown text."""
    runs, problems = collect_runs(runs_root, cells)
    if runs.empty:
        raise ValueError(f"no metrics.json under {runs_root or 'the given cells'}")
    methods = list(methods) if methods else sorted(runs["method"].dropna().unique())
    runs = runs[runs["method"].isin(methods)]
    failed = failed_cells(runs, methods, problems)
    ok = runs[(runs["status"] == "finished") & runs["has_scores"]]
    if ok.empty:
        raise ValueError(f"no finished, scored runs under {runs_root} for methods {methods}")
    banner = not bool(ok["backbones_pretrained"].fillna(False).astype(bool).all())

    subjects = subject_means(ok, COLUMNS)
    order = {m: i for i, m in enumerate(methods)}
    table = summarize(subjects, COLUMNS, ["method"]).sort_values("method", key=lambda s: s.map(order))
    table["backbones_pretrained"] = table["method"].map(
        ok.groupby("method")["backbones_pretrained"].apply(lambda s: bool(s.fillna(False).astype(bool).all()))
    )
    by_kind = summarize(subjects.dropna(subset=["kind"]), COLUMNS, ["method", "kind"])
    paired = paired_difference(subjects, pair[0], pair[1], SCORES + COSTS[1:])

    real_table, real_note = None, ""
    if real:
        try:
            real_subjects = real_rows(ok, backbones, cache_dir)
            real_table = summarize(real_subjects, ["dino", "clip_i"], ["method"])
            real_table["backbones_pretrained"] = bool(real_subjects["backbones_pretrained"].all())
        except Exception as err:  # the reference row must not cost the whole table; say why it is absent
            real_note = f"real-images row not computed: {type(err).__name__}: {err}"
    full = pd.concat([table, real_table], ignore_index=True) if real_table is not None else table

    out.mkdir(parents=True, exist_ok=True)
    lead = ["method", *COLUMNS, "n_subjects", "backbones_pretrained"]
    full = full.reindex(columns=lead + [f"{c}_{s}" for c in COLUMNS for s in ("lo", "hi")])
    # every file whole (temp file + rename): a reader, or a second `make` writing the same table, never sees half
    atomic_write_text(out / "table1.csv", full.round(6).to_csv(index=False))  # 6 decimals: no float noise in diffs
    atomic_write_text(out / "table1_by_kind.csv", by_kind.round(6).to_csv(index=False))
    atomic_write_text(out / "table1_paired.csv", paired.round(6).to_csv(index=False))
    atomic_write_text(out / "table1_runs.csv", runs.drop(columns=["eval"]).to_csv(index=False))
    atomic_write_text(out / "failed_cells.csv", failed.to_csv(index=False))
    plot_tradeoff(table, real_table, out / "tradeoff.png", banner)

    md = render_markdown(full, by_kind, paired, failed, pair, banner, real_note, ok)
    atomic_write_text(out / "table1.md", md)
    return {"table": full, "by_kind": by_kind, "paired": paired, "failed": failed, "markdown": md, "banner": banner}


def render_markdown(
    full: pd.DataFrame,
    by_kind: pd.DataFrame,
    paired: pd.DataFrame,
    failed: pd.DataFrame,
    pair: Sequence[str],
    banner: bool,
    real_note: str,
    ok: pd.DataFrame,
) -> str:
    parts = ["# Table 1: single-subject generation", ""]
    if banner:
        parts += [f"> **{BANNER}**", ""]
    steps = ok.groupby("method")["steps"].apply(lambda s: ", ".join(f"{v:g}" for v in sorted(s.dropna().unique())))
    parts += [markdown_table(full, ["method"], COLUMNS), ""]
    parts += [
        "Mean over subjects (seeds averaged per subject first), 95% bootstrap interval over subjects "
        "in brackets. Steps per method: " + "; ".join(f"{m}: {s or 'n/a'}" for m, s in steps.items()) + ".",
        "",
    ]
    if real_note:
        parts += [real_note, ""]
    parts += ["## Live subjects vs objects", "", markdown_table(by_kind, ["method", "kind"], SCORES), ""]
    parts += [f"## Paired difference {pair[0]} − {pair[1]} (subjects present in both)", ""]
    parts += ["| metric | diff | 95% interval | n |", "|---|---|---|---|"]
    for _, row in paired.iterrows():
        interval = "–" if math.isnan(row["diff_lo"]) else f"[{row['diff_lo']:.4f}, {row['diff_hi']:.4f}]"
        diff = "–" if math.isnan(row["diff"]) else f"{row['diff']:.4f}"
        parts.append(f"| {row['metric']} | {diff} | {interval} | {row['n_subjects']} |")
    parts += ["", f"## Failed or missing cells ({len(failed)})", ""]
    if failed.empty:
        parts.append("none")
    for _, row in failed.iterrows():
        parts.append(
            f"- {row['method']} / {row['subject']} (seed {row['seed']}): {row['reason']}"
            + (f" — `{row['path']}`" if row["path"] else "")
        )
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.table", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--runs", type=Path, help="root searched for metrics.json files")
    source.add_argument("--cells", type=Path, nargs="+", help="exactly these metrics.json files (missing = listed)")
    parser.add_argument("--out", type=Path, default=Path("runs/table1"))
    parser.add_argument("--methods", nargs="+", help="methods to include, in row order (default: all found)")
    parser.add_argument("--pair", nargs=2, default=["para", "lora"], metavar=("A", "B"), help="paired A − B")
    parser.add_argument("--backbones", choices=("pretrained", "random"), help="real-images row (default: as runs)")
    parser.add_argument("--no-real", action="store_true", help="skip the real-images reference row")
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/.cache/eval"))
    args = parser.parse_args(argv)
    try:
        result = build(
            args.runs, args.out, args.methods, args.pair, not args.no_real, args.backbones, args.cache_dir, args.cells
        )
    except ValueError as err:  # nothing to tabulate: a message, not a traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result["banner"]:
        print(BANNER)
    print(result["markdown"])
    if not result["failed"].empty:
        print(f"{len(result['failed'])} failed or missing cells, listed in {args.out / 'failed_cells.csv'}")
    print(f"wrote {args.out}/table1.csv, table1.md, tradeoff.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
