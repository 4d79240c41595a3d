"""Table 1 from run folders: `python -m eval.table --runs runs/table1 --out runs/table1 [--methods para lora]`.

Collects every `metrics.json` under `--runs`, averages each (method, subject) cell over seeds, then reports
per method the mean over subjects with a 95% BCa bootstrap interval over subjects (`eval.stats`), a live/object
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
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eval.options import RANDOM_BANNER, EvalOptions
from eval.protocols import Protocol
from eval.score import DREAMBENCH, protocol_named
from eval.stats import paired_difference, subject_means, summarize
from para.core.io import atomic_write_bytes, atomic_write_text

SCORES = ["dino", "clip_i", "clip_t", "clip_score", "lpips", "ssim"]  # DreamBench's; a protocol brings its own
COSTS = ["trainable_params", "train_seconds", "peak_memory_mb"]
COLUMNS = SCORES + COSTS
COST_LABELS = {"trainable_params": "params", "train_seconds": "train s", "peak_memory_mb": "peak MB"}
LABELS = {**DREAMBENCH.labels, **COST_LABELS}
BANNER = f"WARNING: {RANDOM_BANNER} (CLIP/DINO scores come from random weights; do NOT compare them with any paper)"
REAL = "real_images"
RUN_COLUMNS = [
    "method",
    "subject",
    "kind",
    "steps",
    "seed",
    "status",
    "optimizer",
    "lr",
    *COSTS,
    "has_scores",
    "backbones_pretrained",
    "protocol",
    "data_root",
    "eval",
    "path",
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
        "optimizer": _get(data, "run_info", "train", "optimizer"),  # the reading's AdamW, or what a run took instead
        "lr": _get(data, "run_info", "method", "lr"),
        "trainable_params": data.get("trainable_params"),
        "train_seconds": _get(data, "train_info", "wall_seconds"),
        "peak_memory_mb": _get(data, "train_info", "peak_memory_mb"),
        "has_scores": bool(scores),
        "backbones_pretrained": scores.get("backbones_pretrained_all") if scores else None,
        "protocol": scores.get("protocol", DREAMBENCH.name) if scores else None,
        "data_root": _get(data, "run_info", "data", "root"),
        "eval": _get(data, "run_info", "eval"),
        "path": str(path.parent),
    }
    # every number the protocol scored (DreamBench: SCORES); the table keeps its protocol's columns
    row.update({k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
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
    runs = pd.DataFrame(rows).reindex(columns=list(dict.fromkeys([*RUN_COLUMNS, *(k for r in rows for k in r)])))
    for column in COSTS:
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


def real_rows(
    runs: pd.DataFrame, backbones: str | None, cache_dir: Path | None, protocol: Protocol = DREAMBENCH
) -> pd.DataFrame:
    """The protocol's scores of each subject's real photos against each other (DreamBench: leave-one-out DINO /
    CLIP-I), one row per subject."""
    first = runs.iloc[0]
    pretrained_all = bool(runs["backbones_pretrained"].fillna(False).astype(bool).all())
    if protocol is DREAMBENCH:
        mode = backbones or ("pretrained" if pretrained_all else "random")
    else:
        mode = protocol.name
    opts = EvalOptions.from_any(first["eval"], backbones=mode)
    rows = []
    for (subject, root), group in runs.groupby(["subject", "data_root"], sort=True):
        values = protocol.real_reference(root, subject, opts, cache_dir)
        rows.append(
            {
                "method": REAL,
                "subject": subject,
                "kind": group["kind"].iloc[0],
                **values,
                "backbones_pretrained": pretrained_all if protocol is not DREAMBENCH else mode == "pretrained",
            }
        )
    return pd.DataFrame(rows)


def _distinct(values: pd.Series) -> str | None:
    return ", ".join(sorted(values.dropna().astype(str).unique())) or None


def _rates(values: pd.Series) -> str | None:
    rates = sorted({float(v) for v in pd.to_numeric(values, errors="coerce").dropna()})
    return ", ".join(f"{v:g}" for v in rates) or None


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


def markdown_table(
    frame: pd.DataFrame, keys: Sequence[str], columns: Sequence[str], labels: dict[str, str] | None = None
) -> str:
    """A GitHub markdown table; metric cells read `mean [lo, hi]`."""
    labels = labels or LABELS
    header = [*keys, *(labels.get(c, c) for c in columns), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in frame.iterrows():
        keyed = ["–" if pd.isna(row.get(k)) else str(row[k]) for k in keys]  # the real-images row trained nothing
        cells = keyed + [_cell(row, c) for c in columns] + [str(row.get("n_subjects", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _error_bar(row: pd.Series, key: str) -> list[list[float]]:
    lo, hi, value = row[f"{key}_lo"], row[f"{key}_hi"], row[key]
    return [[max(value - lo, 0) if not math.isnan(lo) else 0], [max(hi - value, 0) if not math.isnan(hi) else 0]]


def plot_tradeoff(
    table: pd.DataFrame, real: pd.DataFrame | None, path: Path, banner: str | None, protocol: Protocol = DREAMBENCH
) -> None:
    """x = text alignment (DreamBench: CLIP-T), y = subject fidelity (DINO), one point per method with its
    intervals; `banner` (random backbones, another world) is the title when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from eval.plots import score_axis

    x, y = protocol.alignment, protocol.fidelity
    labels = {**LABELS, **protocol.labels}
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for _, row in table.iterrows():
        ax.errorbar(
            row[x], row[y], xerr=_error_bar(row, x), yerr=_error_bar(row, y), fmt="o", capsize=3, label=row["method"]
        )
        # the name beside its point: colours alone are hard to match when points sit close together
        ax.annotate(row["method"], (row[x], row[y]), xytext=(5, 5), textcoords="offset points", fontsize=8)
    if real is not None and len(real) and y in real and not math.isnan(real[y].mean()):
        ax.axhline(real[y].mean(), ls="--", color="grey", label=f"real images ({labels.get(y, y)})")
    ax.set_xlabel(f"{labels.get(x, x)} (text alignment) →")
    ax.set_ylabel(f"{labels.get(y, y)} (subject fidelity) →")
    score_axis(ax, "x")
    score_axis(ax, "y")
    # a long banner wraps: cut off at the figure's edge, it would lose the words that say whose numbers these are
    title = "\n".join(textwrap.wrap(str(banner), 70)) if banner else "Text alignment vs subject fidelity"
    ax.set_title(title, fontsize=8 if banner else None)
    # beside the axes, never over them: inside, "best" still hid a method's point behind the box
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, dpi=150, format="png", bbox_inches="tight"))
    plt.close(fig)


def table_protocol(ok: pd.DataFrame) -> Protocol:
    """The one scoring protocol of a table's runs; runs scored under different protocols do not share a table."""
    names = sorted(ok["protocol"].fillna(DREAMBENCH.name).unique())
    if len(names) > 1:
        raise ValueError(
            f"the runs were scored under different protocols {names}: re-score them alike "
            "(python -m eval <run> --backbones ...) or tabulate them separately"
        )
    return protocol_named(names[0])


def table_banner(ok: pd.DataFrame, protocol: Protocol) -> str | None:
    """What every output of this table must say about its numbers (None: real pretrained backbones)."""
    if protocol.banner:
        return protocol.banner
    return None if bool(ok["backbones_pretrained"].fillna(False).astype(bool).all()) else BANNER


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
    protocol = table_protocol(ok)
    banner = table_banner(ok, protocol)
    scores = list(protocol.score_keys)
    columns = scores + COSTS
    ok = ok.assign(**{c: pd.to_numeric(ok[c], errors="coerce") if c in ok else math.nan for c in scores})

    subjects = subject_means(ok, columns)
    order = {m: i for i, m in enumerate(methods)}
    table = summarize(subjects, columns, ["method"]).sort_values("method", key=lambda s: s.map(order))
    # every row says how it trained: a method whose cells did not all use one optimizer lists them all
    table["optimizer"] = table["method"].map(ok.groupby("method")["optimizer"].apply(_distinct))
    # and at which learning rate: cells made before a preset changed show up as a second rate, never silently
    table["lr"] = table["method"].map(ok.groupby("method")["lr"].apply(_rates))
    table["backbones_pretrained"] = table["method"].map(
        ok.groupby("method")["backbones_pretrained"].apply(lambda s: bool(s.fillna(False).astype(bool).all()))
    )
    by_kind = summarize(subjects.dropna(subset=["kind"]), columns, ["method", "kind"])
    paired = paired_difference(subjects, pair[0], pair[1], scores + COSTS[1:])
    # the first method of the pair against every other row, paired by subject (table1_paired_all.csv)
    others = [m for m in methods if m != pair[0] and m in set(subjects["method"])]
    paired_all = pd.concat(
        [paired_difference(subjects, pair[0], m, scores + COSTS[1:]).assign(a=pair[0], b=m) for m in others]
        or [pd.DataFrame(columns=["metric", "diff", "diff_lo", "diff_hi", "n_subjects", "a", "b"])],
        ignore_index=True,
    )

    real_table, real_note = None, ""
    if real and protocol.real_reference is not None:
        try:
            real_subjects = real_rows(ok, backbones, cache_dir, protocol)
            real_table = summarize(real_subjects, list(protocol.reference_keys), ["method"])
            real_table["backbones_pretrained"] = bool(real_subjects["backbones_pretrained"].all())
        except Exception as err:  # the reference row must not cost the whole table; say why it is absent
            real_note = f"real-images row not computed: {type(err).__name__}: {err}"
    full = pd.concat([table, real_table], ignore_index=True) if real_table is not None else table

    out.mkdir(parents=True, exist_ok=True)
    lead = ["method", *columns, "n_subjects", "backbones_pretrained", "optimizer", "lr"]
    full = full.reindex(columns=lead + [f"{c}_{s}" for c in columns for s in ("lo", "hi")])
    # every file whole (temp file + rename): a reader, or a second `make` writing the same table, never sees half
    atomic_write_text(out / "table1.csv", full.round(6).to_csv(index=False))  # 6 decimals: no float noise in diffs
    atomic_write_text(out / "table1_by_kind.csv", by_kind.round(6).to_csv(index=False))
    atomic_write_text(out / "table1_paired.csv", paired.round(6).to_csv(index=False))
    atomic_write_text(out / "table1_paired_all.csv", paired_all.round(6).to_csv(index=False))
    atomic_write_text(out / "table1_runs.csv", runs.drop(columns=["eval"]).to_csv(index=False))
    atomic_write_text(out / "failed_cells.csv", failed.to_csv(index=False))
    plot_tradeoff(table, real_table, out / "tradeoff.png", banner, protocol)

    md = render_markdown(full, by_kind, paired, failed, pair, banner, real_note, ok, protocol)
    atomic_write_text(out / "table1.md", md)
    return {
        "table": full,
        "by_kind": by_kind,
        "paired": paired,
        "paired_all": paired_all,
        "failed": failed,
        "markdown": md,
        "banner": banner,
        "protocol": protocol.name,
    }


def render_markdown(
    full: pd.DataFrame,
    by_kind: pd.DataFrame,
    paired: pd.DataFrame,
    failed: pd.DataFrame,
    pair: Sequence[str],
    banner: str | None,
    real_note: str,
    ok: pd.DataFrame,
    protocol: Protocol = DREAMBENCH,
) -> str:
    labels = {**protocol.labels, **COST_LABELS}
    scores = list(protocol.score_keys)
    title = "Table 1: single-subject generation"
    parts = [f"# {title}" + ("" if protocol is DREAMBENCH else f" ({protocol.name} protocol)"), ""]
    if banner:
        parts += [f"> **{banner}**", ""]
    steps = ok.groupby("method")["steps"].apply(lambda s: ", ".join(f"{v:g}" for v in sorted(s.dropna().unique())))
    parts += [markdown_table(full, ["method", "optimizer", "lr"], scores + COSTS, labels), ""]
    parts += [
        "Mean over subjects (seeds averaged per subject first), 95% BCa bootstrap interval over subjects "
        "in brackets. Steps per method: " + "; ".join(f"{m}: {s or 'n/a'}" for m, s in steps.items()) + ".",
        "",
    ]
    if real_note:
        parts += [real_note, ""]
    parts += ["## Live subjects vs objects", "", markdown_table(by_kind, ["method", "kind"], scores, labels), ""]
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
        print(result["banner"])
    print(result["markdown"])
    if not result["failed"].empty:
        print(f"{len(result['failed'])} failed or missing cells, listed in {args.out / 'failed_cells.csv'}")
    print(f"wrote {args.out}/table1.csv, table1.md, tradeoff.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
