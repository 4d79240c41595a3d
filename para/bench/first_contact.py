"""First contact, timed: what a new user waits for before anything trains (issue 24). Timings only, never asserted
in tests (tests assert the behaviour: tests/test_run.py, tests/test_plan_shipped.py).

    python -m para.bench.first_contact [--repeats 3] [--out runs/bench]      # part of `make bench`

- `cold_refusal`: the paper's command `python run.py method=para subject=dog steps=200` without SDXL's weights, as
  on a fresh checkout: a fresh process, an empty Hugging Face cache (HF_HOME in a temporary folder, offline) and an
  empty plan cache. It must refuse naming the weights within seconds (the preflight counts no plan for it).
- `first_plan_count`: the first resource plan of SDXL (the paper's PaRa cell on a CUDA card), in this process with
  nothing cached: looked up in the counts shipped with the package (para.run.plan_shipped), and counted on fake
  tensors as when the table lacks the setting (other library versions, other settings).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from para.core.io import write_results

REPO = Path(__file__).resolve().parents[2]
PAPER_COMMAND = ["method=para", "subject=dog", "steps=200"]


def cold_refusal(repeats: int) -> dict:
    seconds, cpu, codes, first, counted = [], [], set(), "", False
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="para-first-contact-") as tmp:
            env = {**os.environ, "HF_HOME": f"{tmp}/hf-home", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
            argv = [*PAPER_COMMAND, f"hydra.run.dir={tmp}/never", f"plan.cache_dir={tmp}/plan-cache"]
            start, used = time.perf_counter(), _children_cpu()
            proc = subprocess.run(
                [sys.executable, "run.py", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
            )
            seconds.append(time.perf_counter() - start)
            cpu.append(_children_cpu() - used)
            codes.add(proc.returncode)
            lines = (proc.stdout + proc.stderr).splitlines()
            first = next((line.strip() for line in lines if "[weights]" in line), lines[-1] if lines else "")
            counted = counted or Path(f"{tmp}/plan-cache").exists()
    return {
        "what": "cold refusal: python run.py " + " ".join(PAPER_COMMAND) + " (no weights, empty caches)",
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
        "cpu_seconds": cpu,  # user + system: what the machine's other work does not inflate
        "exit_codes": sorted(codes),
        "plan_counted": counted,
        "message": first,
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def first_plan_count() -> dict:
    from para.run import plan, plan_count, plan_shipped

    cfg = plan.compose_config(*PAPER_COMMAND, "run_dir=unused", "plan.cache_dir=null")
    setting = plan.setting_of(cfg, plan.CUDA)
    plan_count.forget()
    start = time.perf_counter()
    shipped_record = plan.estimate(cfg, plan.CUDA)
    shipped = time.perf_counter() - start
    in_table = plan_shipped.lookup(setting.shipped_key("train"), plan_count.TrainCounts) is not None
    plan_count.forget()
    with plan_shipped.counting():
        start, used = time.perf_counter(), time.process_time()
        counted_record = plan.estimate(cfg, plan.CUDA)
        counted, counted_cpu = time.perf_counter() - start, time.process_time() - used
    return {
        "what": "first SDXL resource plan: " + " ".join(PAPER_COMMAND) + " on a CUDA card, nothing cached",
        "shipped_seconds": shipped,
        "in_shipped_table": in_table,
        "counted_seconds": counted,
        "counted_cpu_seconds": counted_cpu,
        "same_plan": shipped_record == counted_record,
        "total_gb": counted_record["total_gb"],
        "libraries": plan_shipped.library_versions(),
    }


def to_markdown(records: list[dict]) -> str:
    refusal, count = records
    lines = [
        "# First contact (issue 24): what a new user waits for",
        "",
        f"- {refusal['what']}: median **{refusal['median_seconds']:.1f} s** "
        f"(runs: {', '.join(f'{s:.1f}' for s in refusal['seconds'])} s; CPU "
        f"{', '.join(f'{s:.1f}' for s in refusal['cpu_seconds'])} s), exit code "
        f"{'/'.join(map(str, refusal['exit_codes']))}, plan counted: {refusal['plan_counted']}. "
        f"It says: `{refusal['message']}`",
        f"- {count['what']}: **{count['shipped_seconds']:.2f} s** from the shipped counts "
        f"(setting in the table: {count['in_shipped_table']}), {count['counted_seconds']:.1f} s counted on fake "
        f"tensors ({count['counted_cpu_seconds']:.1f} s of CPU); the same plan both ways: {count['same_plan']} "
        f"({count['total_gb']:.1f} GiB; {count['libraries']})",
        "",
        "Wall-clock seconds on this machine, whatever else it was running (CPU seconds are not inflated by it); "
        "not asserted in any test.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m para.bench.first_contact", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cold refusals to time")
    parser.add_argument("--out", default="runs/bench")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected >= 1")
    records = [cold_refusal(args.repeats), first_plan_count()]
    write_results(args.out, "first_contact", records, to_markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
