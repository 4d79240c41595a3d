"""Calibration in the world (`make world-calibrate`): each method's learning rate, rank and steps, through the harness.

    python -m world.calibrate                    # every sweep below → runs/world/calibration/, docs/world.md
    python -m world.calibrate --sweeps para_rank --jobs 2

Every point is an ordinary run (`model=world`, a world subject, the method and its settings), run by the harness's
own worker (`python -m para.run.worker`, one loaded base for many cells), so a point is exactly what
`python run.py model=world ...` gives; finished points are kept (resume=true) and a rerun adds only what is new.
Each point is scored by the world's evaluators on a reduced prompt set (SAMPLING). The curves (subject identity and
prompt fidelity against steps or the swept setting) go to runs/world/calibration/{calibration.csv,curves.png} and
the table to docs/world.md ("Calibration").
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "world" / "calibration"
SUBJECTS = ("sun_disc", "eye_tri")  # one rigid object, one that changes pose
# Fewer samples than a table cell: 10 prompts x 2 images a point (the world's intervals are wide only where a
# method is near chance, and the curves are read for where they flatten).
SAMPLING = ("sample.num_prompts=10", "sample.images_per_prompt=2")
SCORES = ("subject_identity", "subject_similarity", "prompt_fidelity", "leak")


@dataclass(frozen=True)
class Sweep:
    name: str
    method: str
    axis: str  # the override swept (its values on the x axis)
    values: tuple
    fixed: tuple[str, ...] = ()

    def cells(self) -> list[list[str]]:
        return [
            [f"method={self.method}", f"subject={s}", f"{self.axis}={v}", *self.fixed]
            for v in self.values
            for s in SUBJECTS
        ]


# PaRa's steps, rank, γ and init sweeps run at lr 1e-3, the rate they were first measured at; the lr sweep then
# picked 3e-4 (conf/model_method/world_para.yaml). Fixed here so that the points do not follow the preset.
PARA_AROUND = ("method.lr=0.001",)

SWEEPS = {
    s.name: s
    for s in (
        # around the world's defaults (conf/model_method/world_*.yaml): DreamBooth lr 2e-4, LoRA lr 1e-3 at α = 1.0,
        # PaRa rank 16 with γ off (lr: PARA_AROUND); 800 steps each
        Sweep("dreambooth_steps", "dreambooth", "steps", (100, 200, 400, 800, 1600)),
        Sweep("dreambooth_lr", "dreambooth", "method.lr", (5e-5, 1e-4, 2e-4, 5e-4), ("steps=400",)),
        Sweep("dreambooth_prior", "dreambooth", "train.prior_loss_weight", (0.0, 1.0), ("steps=400",)),
        Sweep("lora_steps", "lora", "steps", (200, 400, 800, 1600)),
        Sweep("lora_lr", "lora", "method.lr", (2.5e-4, 5e-4, 1e-3, 2e-3)),
        Sweep("lora_scale", "lora", "method.scale", (1.0, 2.2)),
        Sweep("para_steps", "para", "steps", (100, 200, 400, 800, 1600), PARA_AROUND),
        Sweep("para_lr", "para", "method.lr", (1e-4, 3e-4, 1e-3, 3e-3)),
        Sweep("para_rank", "para", "method.rank", (2, 4, 8, 16), PARA_AROUND),
        Sweep("para_gamma", "para", "method.gamma", (0.025, 0.1, 0.25, "null"), PARA_AROUND),
        Sweep("para_init", "para", "method.init", ("gaussian", "weakest"), PARA_AROUND),
        # the methods Table 1 also runs, whose SDXL learning rates barely move the world's model in 800 steps
        Sweep("svdiff_lr", "svdiff", "method.lr", (3e-3, 1e-2, 3e-2, 1e-1), ("steps=800",)),
        Sweep("loha_lr", "loha", "method.lr", (3e-4, 1e-3, 3e-3, 1e-2), ("steps=800",)),
        Sweep("lokr_lr", "lokr", "method.lr", (3e-4, 1e-3, 3e-3, 1e-2), ("steps=800",)),
        Sweep("oft_lr", "oft", "method.lr", (3e-4, 1e-3, 3e-3, 1e-2), ("steps=800",)),
        # the authors' PaRa with `para`'s world reading (rank 16, γ off: γ = 1/40 caps the world's layers at 1-4)
        Sweep("para_authors_lr", "para_authors", "method.lr", (3e-4, 1e-3, 3e-3), ("method.gamma=null", "steps=800")),
    )
}
# A learning rate is the calibration's pick when it gives the highest subject identity among the rates that keep
# prompt fidelity at or above this (a method that learns the subject by forgetting the prompts is not calibrated).
FIDELITY_FLOOR = 0.8
# A method's identity has saturated at the fewest steps reaching this share of the most its steps sweep reached.
SATURATION_SHARE = 0.9


def run_dir(cell: list[str]) -> Path:
    """Where a point's run goes: named by its overrides, so that the same point is never run twice."""
    name = "-".join(o.split("=", 1)[1] for o in cell if not o.startswith(("method=", "subject=")))
    method = cell[0].split("=", 1)[1]
    subject = cell[1].split("=", 1)[1]
    return OUT / "runs" / method / subject / name


def run_points(cells: list[list[str]], jobs: int) -> None:
    """The unfinished points, through the harness's worker split over `jobs` processes (`--processes`)."""
    todo = [c for c in cells if not _finished(run_dir(c))]
    if not todo:
        return
    common = ["model=world", "logger=none", "resume=true", *SAMPLING]
    args = [a for c in todo for a in ("--cell", shlex.join([*c, f"run_dir={run_dir(c)}"]))]
    subprocess.run([sys.executable, "-m", "para.run.worker", "--processes", str(jobs), *common, *args], cwd=ROOT)


def _finished(folder: Path) -> bool:
    try:
        return json.loads((folder / "metrics.json").read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


def collect(sweeps: list[Sweep]) -> pd.DataFrame:
    rows = []
    for sweep in sweeps:
        for cell in sweep.cells():
            folder = run_dir(cell)
            if not _finished(folder):
                continue
            metrics = json.loads((folder / "metrics.json").read_text())
            scores = metrics.get("scores") or {}
            value = next(o.split("=", 1)[1] for o in cell if o.startswith(f"{sweep.axis}="))
            rows.append(
                {
                    "sweep": sweep.name,
                    "method": sweep.method,
                    "axis": sweep.axis,
                    "value": value,
                    "subject": cell[1].split("=", 1)[1],
                    **{k: scores.get(k) for k in SCORES},
                    "trainable_params": metrics.get("trainable_params"),
                    "train_seconds": (metrics.get("train_info") or {}).get("wall_seconds"),
                }
            )
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean over the subjects of each point."""
    columns = ["subject_identity", "prompt_fidelity", "leak", "train_seconds"]
    return frame.groupby(["sweep", "method", "axis", "value"], sort=False, as_index=False)[columns].mean()


def saturation(table: pd.DataFrame) -> pd.DataFrame:
    """Per `<method>_steps` sweep: the fewest steps at which the mean identity reaches SATURATION_SHARE of its most.

    The world's equivalent of the paper's step counts (PaRa 200, LoRA and DreamBooth 1000) is read from where each
    method stops gaining, not from the absolute numbers.
    """
    rows = []
    for _, points in table[table["axis"] == "steps"].groupby("sweep", sort=False):
        points = points.assign(steps=points["value"].astype(int)).sort_values("steps")
        best = points["subject_identity"].max()
        reached = int(points[points["subject_identity"] >= SATURATION_SHARE * best]["steps"].iloc[0])
        # reached only at the last point swept: identity was still climbing there, so it saturates there or later
        still_rising = reached == points["steps"].max() and len(points) > 1
        rows.append(
            {
                "method": points["method"].iloc[0],
                "steps swept": ", ".join(str(v) for v in points["steps"]),
                "identity at each": ", ".join(f"{v:.2f}" for v in points["subject_identity"]),
                f"saturates at ({SATURATION_SHARE:.0%} of the most)": (
                    f"{reached} or later (still rising)" if still_rising else str(reached)
                ),
            }
        )
    return pd.DataFrame(rows)


def learning_rates(table: pd.DataFrame, defaults: dict[str, dict]) -> pd.DataFrame:
    """Per learning-rate sweep: the calibration's pick (FIDELITY_FLOOR rule) beside the world default in conf/."""
    rows = []
    for _, points in table[table["axis"] == "method.lr"].groupby("sweep", sort=False):
        method = points["method"].iloc[0]
        faithful = points[points["prompt_fidelity"] >= FIDELITY_FLOOR]
        pick = (faithful if len(faithful) else points).sort_values("subject_identity").iloc[-1]
        rows.append(
            {
                "method": method,
                "lr swept": ", ".join(f"{float(v):g}" for v in points["value"]),
                "identity at each": ", ".join(f"{v:.2f}" for v in points["subject_identity"]),
                "prompt fidelity at each": ", ".join(f"{v:.2f}" for v in points["prompt_fidelity"]),
                "pick": f"{float(pick['value']):g}",
                "world default (conf/model_method)": _describe(defaults.get(method)),
            }
        )
    return pd.DataFrame(rows)


def world_defaults(methods) -> dict[str, dict]:
    """Each method's world preset (conf/model_method/world_<method>.yaml) as {key: value}; {} where it has none."""
    from omegaconf import OmegaConf

    found = {}
    for method in methods:
        path = ROOT / "conf" / "model_method" / f"world_{method}.yaml"
        if path.is_file():
            preset = OmegaConf.to_container(OmegaConf.load(path))
            found[method] = {f"method.{k}": v for k, v in (preset.get("method") or {}).items()}
            if "steps" in preset:
                found[method]["steps"] = preset["steps"]
    return found


def _describe(preset: dict | None) -> str:
    if not preset:
        return "none (the SDXL setting)"
    return ", ".join(f"{k.removeprefix('method.')} {v if v is not None else 'off'}" for k, v in preset.items())


def _points_markdown(table: pd.DataFrame) -> str:
    """The points as swept (values as written, e.g. `5e-05`, not rounded to 0.000), scores to three places."""
    shown = table.copy()
    shown["value"] = shown["value"].astype(str)
    for column in ("subject_identity", "prompt_fidelity", "leak"):
        shown[column] = shown[column].map("{:.3f}".format)
    shown["train_seconds"] = shown["train_seconds"].map("{:.0f}".format)
    return shown.to_markdown(index=False, disable_numparse=True)


def section(table: pd.DataFrame) -> str:
    """docs/world.md's "calibration" section: every point, the step saturation and the learning rates."""
    return "\n".join(
        [
            f"Measured by `make world-calibrate` on `{'`, `'.join(SUBJECTS)}`, mean of the two subjects, "
            f"{SAMPLING[0].split('=')[1]} prompts × {SAMPLING[1].split('=')[1]} images a point, one seed. "
            "PaRa's steps, rank, γ and init sweeps at lr "
            f"{PARA_AROUND[0].split('=')[1]} (`PARA_AROUND`), the others around each method's world default. "
            "Curves: `runs/world/calibration/curves.png` (below).",
            "",
            _points_markdown(table),
            "",
            "**Steps: where subject identity saturates** (the world's equivalent of the paper's PaRa 200, LoRA and "
            "DreamBooth 1000):",
            "",
            saturation(table).to_markdown(index=False),
            "",
            f"**Learning rates** (pick: the highest identity among rates with prompt fidelity ≥ {FIDELITY_FLOOR}):",
            "",
            learning_rates(table, world_defaults(table["method"].unique())).to_markdown(index=False),
            "",
            "![the world's calibration curves](img/world_calibration.png)",
        ]
    )


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = list(dict.fromkeys(table["sweep"]))
    columns = min(4, len(sweeps))
    rows_of_plots = -(-len(sweeps) // columns)
    fig, axes = plt.subplots(rows_of_plots, columns, figsize=(3.2 * columns, 2.8 * rows_of_plots), squeeze=False)
    for ax in axes.flat[len(sweeps) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, sweeps, strict=False):
        rows = table[table["sweep"] == name]
        x = range(len(rows))
        ax.plot(x, rows["subject_identity"], "o-", label="subject identity")
        ax.plot(x, rows["prompt_fidelity"], "s--", label="prompt fidelity")
        ax.set_xticks(list(x), rows["value"].astype(str), rotation=45, fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(rows["axis"].iloc[0], fontsize=7)
        ax.set_ylim(0, 1.02)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("THE WORLD's calibration (not SDXL's, not the paper's)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m world.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (the CPU's threads shared out)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/world.md's section")
    args = parser.parse_args(argv)
    sweeps = [SWEEPS[name] for name in args.sweeps]
    run_points([cell for sweep in sweeps for cell in sweep.cells()], args.jobs)
    frame = collect(sweeps)
    OUT.mkdir(parents=True, exist_ok=True)
    frame.to_csv(OUT / "calibration_points.csv", index=False)
    table = summary(frame)
    table.to_csv(OUT / "calibration.csv", index=False)
    plot(table, OUT / "curves.png")
    text = section(table)
    print(text)
    if not args.no_docs and args.sweeps == list(SWEEPS):
        from world.report import DOC, replace_section

        DOC.write_text(replace_section(DOC.read_text(), "calibration", text))
        shutil.copyfile(OUT / "curves.png", DOC.parent / "img" / "world_calibration.png")  # drawn once, above
    return 0


if __name__ == "__main__":
    sys.exit(main())
