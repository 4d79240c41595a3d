"""`make bench`: what one worker process saves on a sweep against one process per cell (para.run.worker).

    python -m para.bench.worker_saving [--model small] [--out runs/bench]   # → worker.{json,md}

The same cells (6 by default: PaRa and LoRA on three subjects, few steps, a few images, random evaluation nets)
run twice, each time into its own fresh folders: one `python run.py` process per cell (how `make
reproduce-table1` ran them before), then one `python -m para.run.worker` process for all of them (how it runs them
now with LAUNCHER=local). Wall time of each, as a user waits for it, start-up included. Random weights: only the
time is a result. On SDXL the saving per cell is larger (13.9 GB of files read and cast per load).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from para.core.io import write_results
from para.core.provenance import provenance

REPO = Path(__file__).resolve().parents[2]
SUBJECTS = ("dog", "cat", "backpack")
COMMON = [
    "logger=none",
    "steps=4",
    "sample.num_prompts=2",
    "sample.images_per_prompt=1",
    "sample.steps=4",
    "eval.backbones=random",
    "resume=true",
]


def cells(methods: tuple[str, ...] = ("para", "lora"), subjects: tuple[str, ...] = SUBJECTS) -> list[list[str]]:
    return [[f"method={m}", f"subject={s}"] for m in methods for s in subjects]


def _timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def measure(model: str, sweep: list[list[str]], root: Path) -> dict:
    """Wall seconds of `sweep` as one process per cell and as one worker, into folders under `root`."""
    common = [f"model={model}", *COMMON]
    per_cell = [
        _timed([sys.executable, "run.py", *common, *cell, f"hydra.run.dir={root / 'per_process' / str(i)}"])
        for i, cell in enumerate(sweep)
    ]
    worker_cells = [
        ["--cell", shlex.join([*cell, f"run_dir={root / 'worker' / str(i)}"])] for i, cell in enumerate(sweep)
    ]
    worker = _timed([sys.executable, "-m", "para.run.worker", *common, *(a for c in worker_cells for a in c)])
    separate = sum(per_cell)
    return {
        "model": model,
        "cells": [" ".join(c) for c in sweep],
        "common": common,
        "per_process_seconds": per_cell,
        "separate_seconds": separate,
        "worker_seconds": worker,
        "saving_seconds": separate - worker,
        "saving_per_cell_seconds": (separate - worker) / len(sweep),
        "speedup": separate / worker,
        "weights": "random",
        "provenance": provenance("cpu"),
    }


def to_markdown(r: dict) -> str:
    n = len(r["cells"])
    return "\n".join(
        [
            f"# `make bench`: a sweep of {n} cells on `{r['model']}`, one worker vs one process per cell",
            "",
            "| | wall s | per cell s |",
            "|---|---:|---:|",
            *(
                f"| {what} | {r[key]:.1f} | {r[key] / n:.1f} |"
                for what, key in (
                    ("one process per cell (`run.py`)", "separate_seconds"),
                    ("one worker (`python -m para.run.worker`)", "worker_seconds"),
                )
            ),
            "",
            f"The worker saves {r['saving_seconds']:.1f} s ({r['saving_per_cell_seconds']:.1f} s per cell, "
            f"{r['speedup']:.2f}× faster): the base model and the evaluation nets load once, Python and the "
            "libraries start once. Cells: "
            + "; ".join(f"`{c}`" for c in r["cells"])
            + f" (with `{' '.join(r['common'])}`).",
            "",
            "Random weights: only the time is a result.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m para.bench.worker_saving", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", help="conf/model/<name>.yaml (tiny, small)")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="worker-bench-") as tmp:
        record = measure(args.model, cells(), Path(tmp))
    write_results(args.out, "worker", [record], to_markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
