"""`make plan`'s tables (markdown) from `para.run.plan.rows`: every method on 24/40/80 GB cards, DreamBooth's
options, the disk of Table 1. Every number is counted on the architecture's shapes, none is measured on a GPU
(`make rehearsal` compares the count with a measured CPU run)."""

from __future__ import annotations

from para.run.config import CONF_DIR

# Cards as `torch.cuda.get_device_properties(...).total_memory` reports them, in GiB: a "40 GB" A100 has 39.6, an
# 80 GB A100 or H100 79.2; the 24 GB consumer cards (RTX 3090, 4090) about 23.6 (a reading; L4 and A10G: ~22).
CARDS = {"24 GB": 23.6, "A100 40GB": 39.6, "80 GB": 79.2}


def card_label(gib: float) -> str:
    """A card size's column name: `CARDS`' name with its GiB, or the size itself."""
    name = next((name for name, size in CARDS.items() if size == gib), None)
    return f"{name} ({gib:g} GiB)" if name else f"{gib:g} GiB"


def _gb(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _random_weights(model: str) -> bool:
    """Whether conf/model/<model>.yaml builds its weights at random (tiny, small) rather than loading them."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF_DIR / "model" / f"{model}.yaml")
    kind = OmegaConf.select(node, "kind") or OmegaConf.select(node, "model.kind")
    return kind in ("tiny", "small")


def markdown(records: list[dict], cards: list[float], model: str, resolution: int) -> str:
    card_cols = " | ".join(card_label(c) for c in cards)
    name = "SDXL 1.0" if model == "sdxl" else f"`{model}`" + (" (random weights)" if _random_weights(model) else "")
    lines = [
        f"# Resource plan: {name} at {resolution} px, Table 1 settings, one CUDA card (counted, not measured)",
        "",
        f"| method | options | weights | trainable | gradients | optimizer | activations | train peak | sample peak "
        f"| eval peak | total | {card_cols} | host RAM | checkpoint × kept | disk / cell |",
        "|---|---|" + "---:|" * (11 + len(cards)) + "---:|",
    ]
    for r in (r for r in records if "table" not in r):
        lines.append(_line(r, cards))
    lines += [
        "",
        "GiB throughout; total = the largest phase peak + the reserve for the CUDA context; host RAM = what the run "
        "needs on the host beside the card (loading; a checkpoint copied out to be written).",
        "",
    ]
    misfits = [(r, card, opts) for r in records for card, opts in (r.get("fits_with") or {}).items()]
    if misfits:
        lines += ["## Runs that do not fit, and what would", ""]
        for r, card, opts in misfits:
            lines.append(
                f"- `{r['method']}` on {card_label(float(card))}: "
                + ("; ".join(f"`{o}`" for o in opts) or "nothing tried fits")
            )
        lines.append("")
    lines += dreambooth_table(records, cards)
    lines += table1_disk(records)
    return "\n".join(lines) + "\n"


def _line(r: dict, cards: list[float]) -> str:
    fits = " | ".join("yes" if r[f"fits_{c:g}"] else "no" for c in cards)
    return (
        f"| `{r['method']}` | {r['options']} | {_gb(r['weights_gb'])} | {r['trainable_params'] / 1e6:,.1f} M "
        f"| {_gb(r['gradients_gb'])} | {_gb(r['optimizer_gb'])} | {_gb(r['activations_gb'])} "
        f"| {_gb(r['train_peak_gb'])} | {_gb(r['sample_peak_gb'])} | {_gb(r.get('eval_peak_gb'))} "
        f"| **{_gb(r['total_gb'])}** | {fits} | {_gb(r.get('host_gb'))} "
        f"| {r['checkpoint_gb']:.2f} × {r['checkpoints_kept']} | {_gb(r['disk_peak_gb'])} |"
    )


def dreambooth_table(records: list[dict], cards: list[float]) -> list[str]:
    """The table docs/methods.md shows under "DreamBooth"."""
    rows_ = [r for r in records if r.get("table") == "dreambooth"]
    if not rows_:
        return []
    card_cols = " | ".join(card_label(c) for c in cards)
    lines = [
        "## DreamBooth memory",
        "",
        f"| options | gradients | optimizer | activations | train peak | total | {card_cols} | host RAM |",
        "|---|" + "---:|" * (6 + len(cards)),
    ]
    for r in rows_:
        fits = " | ".join("fits" if r[f"fits_{c:g}"] else "–" for c in cards)
        lines.append(
            f"| {r['options']} | {_gb(r['gradients_gb'])} | {_gb(r['optimizer_gb'])} | {_gb(r['activations_gb'])} "
            f"| {_gb(r['train_peak_gb'])} | {_gb(r['total_gb'])} | {fits} | {_gb(r.get('host_gb'))} |"
        )
    return [*lines, ""]


def _table1_cells(records: list[dict]) -> list[dict]:
    return [r for r in records if "table" not in r and r["method"] in ("para", "lora", "dreambooth")]


def _subjects() -> int:
    """Table 1's subjects: those whose photos are the DreamBooth dataset's (a subject with a photo folder of its
    own sets `data.root`, e.g. the world's)."""
    return sum("\ndata:" not in path.read_text() for path in (CONF_DIR / "subject").glob("*.yaml"))


def table1_disk_gb(records: list[dict]) -> float:
    """Table 1's disk when its cells run one after another: every cell's adapter and samples, plus the
    checkpoints of the cell that is training."""
    cells = _table1_cells(records)
    if not cells:
        return 0.0
    after = _subjects() * sum(r["disk_after_gb"] for r in cells)
    return after + max(r["disk_peak_gb"] - r["disk_after_gb"] for r in cells)


def table1_disk(records: list[dict]) -> list[str]:
    cells = _table1_cells(records)
    if not cells:
        return []
    subjects = _subjects()
    after = subjects * sum(r["disk_after_gb"] for r in cells)
    kept = subjects * sum(r["disk_after_with_checkpoints_gb"] for r in cells)
    names = ", ".join(r["method"] for r in cells)
    return [
        f"## Disk of Table 1 ({subjects} subjects × {names}, one seed)",
        "",
        f"- after every cell: **{after:.0f} GiB** (adapters + samples; checkpoints removed once the adapter is saved)",
        f"- with every cell's checkpoints kept: {kept:.0f} GiB",
        f"- at most, while the last cell trains: {table1_disk_gb(records):.0f} GiB",
        "",
    ]
