"""`make gpu-acceptance`: the GPU path checked end to end on one card, in about ten minutes → runs/gpu/acceptance.json.

    python -m para.bench.gpu_acceptance [--methods …] [--steps 20] [--out runs/gpu]
    python -m para.bench.gpu_acceptance --model tiny --device cpu --short    # the same code on a CPU, in seconds

1. DreamBooth, the heaviest cell: `python run.py method=dreambooth steps=60 train.checkpoint_every=30` is killed
   (SIGKILL: no grace, like a lost node) once it logged step 40, then the same command again resumes from the
   checkpoint of step 30, finishes, samples 4 images and scores them. Checked: it resumed from 30, trained 60
   steps in all, wrote 4 images.
2. Every registered method (or `--methods`) trains `--steps` steps at 1024 px in one worker process
   (para.run.worker: SDXL loads once), samples 2 images and scores them. From each run's metrics.json: the CUDA
   peak of training and of sampling (`max_memory_allocated`) next to the resource plan's count for the same
   run, the median step time, the PaRa/LoRA step ratio and sampling images per second.

SDXL 1.0 from the local Hugging Face cache when it is there, else a real-layout folder with RANDOM weights built
once under runs/.cache/gpu/ (para.core.sdxl_layout, 6.9 GB): then every figure is a speed or memory figure only.
The evaluation nets are random (`eval.backbones=random`, offline). Without a GPU it says so and exits 0; CI does
not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
MIB_PER_GIB = 1024
# full: the protocol; short: the same path in seconds (tiny model on a CPU, the test suite)
PLANS = {
    "full": dict(db_steps=60, checkpoint=30, kill=40, images=4, sample_steps=25),
    "short": dict(db_steps=12, checkpoint=6, kill=8, images=2, sample_steps=2),
}


def model_overrides(model: str, cache: Path) -> tuple[list[str], bool]:
    """(overrides that pick the base model, whether its weights are pretrained): SDXL from the local cache, else
    a random-weight SDXL folder built once; `tiny`/`small` as they are."""
    if model != "sdxl":
        return [f"model={model}"], False
    from huggingface_hub import try_to_load_from_cache

    from para.core.models import SDXL_HUB_ID
    from para.core.sdxl_layout import write_random_sdxl

    for variant in ("", ".fp16"):  # the UNet's file of either variant in the local cache
        if isinstance(try_to_load_from_cache(SDXL_HUB_ID, f"unet/diffusion_pytorch_model{variant}.safetensors"), str):
            return ["model=sdxl", *(["model.variant=fp16"] if variant else [])], True
    folder = write_random_sdxl(cache / "sdxl-random")
    return ["model=sdxl", f"model.path={folder.resolve()}", "model.variant=fp16"], False


def _logged_step(log: Path) -> int:
    """The last training step `log.jsonl` recorded (0 before the first)."""
    if not log.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in log.read_text().splitlines() if '"train/loss"' in line]
    return max(steps, default=0)


def dreambooth_resume(common: list[str], run_dir: Path, plan: dict) -> dict[str, Any]:
    """The kill-and-resume check of the module docstring; what it saw."""
    argv = [
        sys.executable, "run.py", *common, "method=dreambooth", f"steps={plan['db_steps']}",
        f"train.checkpoint_every={plan['checkpoint']}", "train.log_every=1", "sample.num_prompts=1",
        f"sample.images_per_prompt={plan['images']}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run_dir.parent / "dreambooth-first.log", "w") as out:  # a fresh start: overwrite what we wrote before
        first = subprocess.Popen([*argv, "overwrite=true"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        while first.poll() is None and _logged_step(run_dir / "log.jsonl") < plan["kill"]:
            time.sleep(0.01)
        killed_at = _logged_step(run_dir / "log.jsonl")
        if first.poll() is None:
            first.send_signal(signal.SIGKILL)
        first.wait()
    with open(run_dir.parent / "dreambooth-resumed.log", "w") as out:  # the same command: resume=true is the default
        second = subprocess.run(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    train = metrics.get("train_info") or {}
    images = sorted((run_dir / "samples").glob("*.png"))
    checks = {
        "killed": first.returncode == -signal.SIGKILL and killed_at >= plan["kill"],
        "resumed_from_checkpoint": train.get("resumed_from") == plan["checkpoint"],
        "trained_all_steps": len(train.get("losses") or []) == plan["db_steps"],
        "sampled": len(images) == plan["images"],
        "finished": second.returncode == 0 and metrics.get("status") == "finished",
    }
    return {
        "killed_at_step": killed_at,
        "checks": checks,
        "ok": all(checks.values()),
        "minutes": (time.perf_counter() - t0) / 60,
        **summary("dreambooth", metrics),
    }


def summary(method: str, metrics: dict) -> dict[str, Any]:
    """Measured peaks (GiB), the plan's counts for the same run, step time and sampling rate of one run."""
    train, sample, plan = metrics.get("train_info") or {}, metrics.get("sample_info") or {}, metrics.get("plan") or {}
    images = len(list((Path(metrics.get("run_dir", ".")) / "samples").glob("*.png")))

    def gib(mb: float | None) -> float | None:
        return None if mb is None else mb / MIB_PER_GIB

    return {
        "method": method,
        "status": metrics.get("status"),
        "train_peak_gb": gib(train.get("peak_memory_mb")),
        "plan_train_peak_gb": plan.get("train_peak_gb"),
        "sample_peak_gb": gib(sample.get("peak_memory_mb")),
        "plan_sample_peak_gb": plan.get("sample_peak_gb"),
        "plan_total_gb": plan.get("total_gb"),
        "step_seconds": train.get("median_step_seconds"),
        "sample_images_per_second": images / sample["seconds"] if sample.get("seconds") else None,
    }


def every_method(common: list[str], methods: list[str], steps: int, root: Path) -> list[dict]:
    """`steps` steps of each method in one worker process (one base load), 2 images sampled and scored each."""
    from para.run.worker import run_cells

    cells = [[f"method={m}", f"steps={steps}", f"run_dir={root / m}", "overwrite=true"] for m in methods]
    shared = ["sample.num_prompts=1", "sample.images_per_prompt=2", "sample.batch_size=2", *common]
    run_cells(shared, cells)
    rows = []
    for method in methods:
        path = root / method / "metrics.json"
        rows.append(summary(method, json.loads(path.read_text())) if path.is_file() else {"method": method})
    lora = next((r for r in rows if r["method"] == "lora"), {})
    for row in rows:
        both = row.get("step_seconds") and lora.get("step_seconds")
        row["step_ratio_lora"] = row["step_seconds"] / lora["step_seconds"] if both else None
    return rows


def main(argv: list[str] | None = None) -> int:
    from para.run.registry import METHODS

    parser = argparse.ArgumentParser(prog="python -m para.bench.gpu_acceptance", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sdxl", help="sdxl (the cached weights, else random), tiny, small")
    parser.add_argument("--device", default="cuda", help="cuda (the point of it) or cpu (the short mode's test)")
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS), choices=sorted(METHODS))
    parser.add_argument("--steps", type=int, default=20, help="training steps of every method")
    parser.add_argument("--short", action="store_true", help="DreamBooth 12 steps, killed at 8, resumed from 6")
    parser.add_argument("--out", default="runs/gpu")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. data.root=…")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-acceptance: no CUDA GPU on this machine, nothing to accept (run it where `nvidia-smi` shows one)")
        return 0
    out, plan, t0 = Path(args.out).resolve(), PLANS["short" if args.short else "full"], time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    model, pretrained = model_overrides(args.model, REPO / "runs/.cache/gpu")
    common = [
        *model,
        f"device={args.device}",
        "logger=none",
        "eval.backbones=random",
        f"sample.steps={plan['sample_steps']}",
    ]
    resume = dreambooth_resume(common, out / "dreambooth-resume", plan)
    rows = every_method(common, args.methods, args.steps, out / "methods")
    record = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device,
        "model": " ".join(model),
        "base_weights_pretrained": pretrained,
        "note": "GiB; peaks measured (CUDA max_memory_allocated) next to the plan's counts for the same runs",
        "dreambooth_resume": resume,
        "methods": rows,
        "minutes": (time.perf_counter() - t0) / 60,
    }
    (out / "acceptance.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0 if resume["ok"] and all(r.get("status") == "finished" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
