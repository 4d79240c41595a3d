"""`make rehearsal`: the real path at SDXL's real size on a CPU, measured against the resource plan.

    python -m para.run.rehearsal [--methods para lora dreambooth] [--steps 4] [--resolution 256] [--out runs/rehearsal]

Builds once, into `runs/.cache/rehearsal/sdxl-random/`, a real-layout SDXL 1.0 base folder with RANDOM weights
(`para.core.sdxl_layout`: the five components' real configs, both tokenizers, fp16 variant files,
`model_index.json`), then runs `python run.py model.path=<it> model.variant=fp16` per method, as a user would: bf16
weights and autocast, a few steps at 256 px with a checkpoint, one image sampled and scored (random evaluation
nets). Each run's own preflight (`para.run.plan`) decides whether it fits this machine's RAM and refuses it if not
(DreamBooth, at ~24 GiB, usually). Per method it records wall time, the process's peak RSS, the measured peaks of
training and sampling next to the plan's estimates for the same settings (the plan's error; target ±25 %), and
the bytes the run left on disk → `runs/rehearsal/rehearsal.{json,md}`. About 10–15 minutes and up to ~13 GB of
RAM on a 2-core CPU; not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from para.core.io import read_json, write_results
from para.core.sdxl_layout import COMPLETE, write_random_sdxl

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("runs/.cache/rehearsal/sdxl-random")
GIB, MIB = 2**30, 2**20


def run_command(method: str, folder: Path, run_dir: Path, steps: int, resolution: int) -> list[str]:
    """`python run.py …` for one method on the rehearsal folder: bf16, `steps` steps, one image."""
    return [
        sys.executable, "run.py", f"method={method}", f"model.path={folder.resolve()}", "model.variant=fp16",
        "model.weights_dtype=bf16", "train.mixed_precision=bf16", f"model.resolution={resolution}",
        f"steps={steps}", f"train.checkpoint_every={max(1, steps // 2)}", "sample.num_prompts=1",
        "sample.images_per_prompt=1", "sample.steps=4", "sample.batch_size=1", "eval.backbones=random",
        "logger=none", "device=cpu", f"run_dir={run_dir.resolve()}", "overwrite=true",
    ]  # fmt: skip


def measure(command: list[str], log: Path) -> dict:
    """Run `command` in the repository root; wall time, exit code and the process's own peak RSS (wait4)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return {
        "exit_code": child.returncode,
        "wall_minutes": (time.perf_counter() - t0) / 60,
        "process_peak_rss_gb": usage.ru_maxrss * 1024 / GIB,  # Linux: KiB
    }


def folder_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (0 if absent)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _error(measured: float | None, planned: float | None) -> float | None:
    return None if not measured or not planned else measured / planned - 1


def record(method: str, run_dir: Path, measured: dict, log: Path) -> dict:
    """Measured against planned, from the run's metrics.json (the plan it ran with is recorded there)."""
    row = {"method": method, **measured, "log": str(log)}
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():  # refused before the run folder existed (the plan, or bad input)
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        refusal = [line for line in lines if "resource plan" in line or line.lstrip().startswith("- ")]
        row["status"] = "refused" if refusal else "failed"
        row["reason"] = " ".join(line.strip() for line in (refusal or lines[-1:]))[:600]
        return row
    metrics = read_json(metrics_path)
    plan = metrics.get("plan") or {}
    runtime = plan.get("runtime_gb", 0.0)
    train = (metrics.get("train_info") or {}).get("peak_memory_mb")
    sample = (metrics.get("sample_info") or {}).get("peak_memory_mb")
    checkpoints = run_dir / "checkpoints"
    row |= {
        "status": metrics.get("status"),
        "error": metrics.get("error"),
        "process_peak_planned_gb": plan.get("total_gb"),
        "peak_phase_planned": plan.get("peak_phase"),
        "train_peak_gb": train and train * MIB / GIB,
        "train_peak_planned_gb": plan and plan["train_peak_gb"] + runtime,
        "sample_peak_gb": sample and sample * MIB / GIB,
        "sample_peak_planned_gb": plan and plan["sample_peak_gb"] + runtime,
        "sample_start_gb": ((metrics.get("sample_info") or {}).get("start_memory_mb") or 0) * MIB / GIB,
        "written_gb": folder_bytes(run_dir) / GIB,
        "adapter_gb": folder_bytes(run_dir / "adapter.safetensors") / GIB,
        "adapter_planned_gb": plan.get("adapter_gb"),
        "checkpoint_gb": folder_bytes(checkpoints) / GIB / max(1, len(list(checkpoints.glob("step*")))),
        "checkpoint_planned_gb": plan.get("checkpoint_gb"),
        "median_step_seconds": (metrics.get("train_info") or {}).get("median_step_seconds"),
    }
    for name in ("process", "train", "sample"):
        row[f"{name}_error"] = _error(row[f"{name}_peak_gb" if name != "process" else "process_peak_rss_gb"],
                                      row[f"{name}_peak_planned_gb"])  # fmt: skip
    return row


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.0f} %"


def _gb(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _vs(measured: float | None, planned: float | None, error: float | None) -> str:
    return f"{_gb(measured)} / {_gb(planned)} ({_pct(error)})"


def markdown(rows: list[dict], build: dict, args) -> str:
    lines = [
        f"# Rehearsal: SDXL 1.0's real layout and size, RANDOM weights, {args.resolution} px, bf16, CPU",
        "",
        f"Folder `{build['folder']}` ({build['gb']:.1f} GB of fp16 variant files, built once in "
        f"{build['minutes']:.1f} min). Each method: `python run.py model.path=<it> model.variant=fp16` with bf16 "
        f"weights and autocast, {args.steps} steps (a checkpoint halfway), 1 image (4 DDIM steps), scored with "
        "random evaluation nets. Memory is the resident set in GiB, measured / planned (the plan's error); the "
        "plan adds the process's own memory before loading to its counted tensors.",
        "",
        "| method | status | minutes | s / step | process peak | training peak | sampling peak | written "
        "| adapter (planned) | checkpoint (planned) |",
        "|---|---|" + "---:|" * 8,
    ]
    notes = []
    for r in rows:
        if "train_peak_gb" not in r:
            lines.append(f"| `{r['method']}` | {r['status']} | {r['wall_minutes']:.1f} |" + " – |" * 7)
            notes.append(f"- `{r['method']}` {r['status']}: {r.get('reason', '')}")
            continue
        step = r.get("median_step_seconds")
        lines.append(
            f"| `{r['method']}` | {r['status']} | {r['wall_minutes']:.1f} | {'–' if step is None else f'{step:.1f}'} "
            f"| {_vs(r['process_peak_rss_gb'], r['process_peak_planned_gb'], r['process_error'])} "
            f"| {_vs(r['train_peak_gb'], r['train_peak_planned_gb'], r['train_error'])} "
            f"| {_vs(r['sample_peak_gb'], r['sample_peak_planned_gb'], r['sample_error'])} "
            f"| {_gb(r['written_gb'])} | {_gb(r['adapter_gb'])} ({_gb(r['adapter_planned_gb'])}) "
            f"| {_gb(r['checkpoint_gb'])} ({_gb(r['checkpoint_planned_gb'])}) |"
        )
        if r.get("error"):
            notes.append(f"- `{r['method']}` failed: {r['error'][:300]}")
    return "\n".join([*lines, "", *notes]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["para", "lora", "dreambooth"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--out", default="runs/rehearsal")
    parser.add_argument("--folder", default=str(CACHE), help="where the random-weight SDXL folder is built (once)")
    args = parser.parse_args(argv)
    out, folder = Path(args.out), Path(args.folder)
    write_random_sdxl(folder)  # once; the marker records how long the build took
    built = json.loads((folder / COMPLETE).read_text())
    build = {"folder": str(folder), "gb": folder_bytes(folder) / 1e9, "minutes": built["seconds"] / 60}
    rows = []
    for method in args.methods:
        run_dir, log = out / method, out / f"{method}.log"
        print(f"rehearsal: {method} …", flush=True)
        measured = measure(run_command(method, folder, run_dir, args.steps, args.resolution), log)
        rows.append(record(method, run_dir, measured, log))
        print(f"  {rows[-1]['status']} in {measured['wall_minutes']:.1f} min", flush=True)
    write_results(out, "rehearsal", [{"build": build}, *rows], markdown(rows, build, args))
    return 0 if all(r["status"] in ("finished", "refused") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
