"""What every experiment writes: labelled image grids, tables (CSV + markdown), provenance, stale-output guards.

Outputs say when their numbers cannot be compared with any paper: a random-weight base model (`model=tiny`)
or random evaluation backbones (`eval.backbones=random`) put a banner on top of every markdown table and a
flag column in every CSV.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf
from PIL import Image, ImageDraw, ImageFont

from eval.table import BANNER as RANDOM_BACKBONES_BANNER
from para.core.io import atomic_write_json, atomic_write_text
from para.core.provenance import provenance

LABEL_WIDTH = 150
HEADER_HEIGHT = 18


def label_grid(
    rows: Sequence[tuple[str, Sequence[Image.Image]]], col_labels: Sequence[str] | None = None, cell: int = 160
) -> Image.Image:
    """Rows of images (each resized to cell × cell) with a label on the left and optional column labels."""
    cols = max(len(images) for _, images in rows)
    top = HEADER_HEIGHT if col_labels else 0
    grid = Image.new("RGB", (LABEL_WIDTH + cols * cell, top + len(rows) * cell), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for c, text in enumerate(col_labels or []):
        draw.text((LABEL_WIDTH + c * cell + 4, 3), _fit(text, cell), fill="black", font=font)
    for r, (label, images) in enumerate(rows):
        y = top + r * cell
        for i, line in enumerate(_wrap(label, 22)[: cell // 14]):
            draw.text((4, y + 4 + 14 * i), line, fill="black", font=font)
        for c, image in enumerate(images):
            grid.paste(image.convert("RGB").resize((cell, cell)), (LABEL_WIDTH + c * cell, y))
    return grid


def _fit(text: str, width: int) -> str:
    limit = max(4, width // 7)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def to_markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub markdown table: '–' for missing values, '|' in text escaped, floats to `digits` places."""

    def cell(value: Any) -> str:
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    lines = [header, "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def write_table(frame: pd.DataFrame, out: Path, stem: str, title: str, notes: Sequence[str] = ()) -> Path:
    """`<stem>.csv` and `<stem>.md` (title, banners/notes, table) under `out`; returns the markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.csv", frame.to_csv(index=False))
    notes_md = "".join(f"> {n}\n" for n in notes)
    return atomic_write_text(out / f"{stem}.md", f"# {title}\n\n{notes_md}\n{to_markdown(frame)}\n")


def flags(exp: Any, backbones_pretrained: bool | None) -> dict[str, Any]:
    """Whether the numbers can be compared with anything: base weights and evaluation backbones real or random."""
    return {
        "base_weights_pretrained": exp.cfg.model.kind == "pretrained",
        "backbones_pretrained": backbones_pretrained,
    }


def banners(flag: dict[str, Any]) -> list[str]:
    lines = []
    if not flag["base_weights_pretrained"]:
        lines.append("WARNING: random-weight base model: the images and numbers check the pipeline, not the method")
    if flag["backbones_pretrained"] is False:
        lines.append(RANDOM_BACKBONES_BANNER)
    return lines


def protocol_banner(exp: Any) -> list[str]:
    """What the scoring protocol says on every table it scores (e.g. the world's: its numbers are not SDXL's)."""
    from eval.score import protocol_named

    banner = protocol_named(exp.cfg.eval.backbones).banner
    return [banner] if banner else []


def add_flags(frame: pd.DataFrame, flag: dict[str, Any]) -> pd.DataFrame:
    return frame.assign(**flag)


def write_provenance(exp: Any, folder: Path, **extra: Any) -> Path:
    """`provenance.json`: what produced the outputs (git SHA, packages, device, config, runs, flags)."""
    from para.core.models import model_id

    record = {
        "experiment": exp.name,
        "command": f"python -m experiments.{exp.name} " + " ".join(exp.overrides),
        "params": dataclasses.asdict(exp.params),
        "config": OmegaConf.to_container(exp.cfg, resolve=True),
        "model_id": model_id(exp.cfg.model),
        "training_runs": list(dict.fromkeys(exp.runs)),
        **provenance(exp.device),
        **extra,
    }
    return atomic_write_json(folder / "provenance.json", record)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def reset_if_changed(folder: Path, fingerprint: dict[str, Any]) -> None:
    """Empty `folder` unless it was made for this exact `fingerprint` (adapters, prompts, sampling settings).

    Sampling keeps images already on disk (so an interrupted experiment resumes); without this guard, images
    of a previous adapter would silently stand in for the new one.
    """
    stamp = folder / "fingerprint.json"
    wanted = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return
    if folder.exists():
        shutil.rmtree(folder)
    atomic_write_json(stamp, wanted)


def sampling_fingerprint(exp: Any, specs: Sequence[Any], **parts: Any) -> dict[str, Any]:
    """What determines a samples folder's images: prompts, sampling settings, seed, base model, plus `parts`."""
    from para.core.models import model_id

    return {
        "prompts": [s.prompt for s in specs],
        "sample": OmegaConf.to_container(exp.cfg.sample, resolve=True),
        "seed": exp.cfg.seed,
        "model": model_id(exp.cfg.model),
        **parts,
    }


def open_images(paths: Sequence[Path]) -> list[Image.Image]:
    from eval.score import load_image

    return [load_image(p) for p in paths]


def condition_grid(
    conditions: dict[str, Path], specs: Sequence[Any], subjects: Sequence[str], data_root: str
) -> Image.Image:
    """A row with each subject's first photo, then one row per condition: image 0 of every prompt."""
    from eval.score import real_photo_paths
    from para.core.sampling import image_name

    photos = open_images([real_photo_paths(data_root, s)[0] for s in subjects])
    rows = [("photos: " + " | ".join(subjects), photos)]
    rows += [(name, open_images([f / image_name(s.index, 0) for s in specs])) for name, f in conditions.items()]
    return label_grid(rows, [f"prompt {s.index}" for s in specs])


def write_outputs(
    exp: Any,
    folder: Path,
    stem: str,
    title: str,
    per_image: pd.DataFrame,
    summary: pd.DataFrame,
    flag: dict[str, Any],
    notes: Sequence[str],
    grid: Image.Image,
    **extra: Any,
) -> Path:
    """Everything an experiment leaves in `folder`: `<stem>.{csv,md}` (summary), `per_image.{csv,md}`,
    `grid.png` and `provenance.json`; every table carries the comparability flags and banners."""
    notes = [*banners(flag), *protocol_banner(exp), *notes]
    write_table(add_flags(per_image, flag), folder, "per_image", f"{title}: every image", notes)
    path = write_table(add_flags(summary, flag), folder, stem, title, notes)
    grid.save(folder / "grid.png")
    write_provenance(exp, folder, flags=flag, **extra)
    return path
