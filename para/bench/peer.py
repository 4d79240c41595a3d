"""`make bench-peer`: our LoRA training step vs diffusers' `train_dreambooth_lora_sdxl.py`, side by side.

    python -m para.bench.peer [--model small] [--resolution 128] [--steps 12] [--out runs/bench]

Both train LoRA r=16 on the attention projections q/k/v/out (the peer's fixed target; ours: `method=lora
method.subset=attn`) of the same SDXL-shaped random-weight pipeline (`para.core.models.build_random_pipeline`, saved
with `save_pretrained` into `<out>/peer_model` for the peer), on the same photos, resolution, batch 1, float32 on
CPU. The peer script is run where it lives (`../shared/peers`, never copied) with `accelerate launch --cpu
--num_processes 1`. The peer encodes every photo with the VAE at every step, so ours is run both like that
(`train.cache_latents=false`) and as it runs by default (cached).

Measured per side, each as its own process: it/s as the peer's progress bar shows it (tqdm: an exponential
moving average, smoothing 0.3, of the step times; for ours the same average computed from the recorded step
times), our median warm step, the process's wall time and peak resident memory (`os.wait4`, child processes
included). Separate processes cannot be interleaved step by step, so the three runs are repeated round-robin
(`--repeats`) and the median it/s is reported. Writes `<out>/peer.json` and `<out>/peer.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from para.core.io import read_json, write_results
from para.core.provenance import REPO, provenance

PEER_SCRIPT = REPO.parent / "shared" / "peers" / "train_dreambooth_lora_sdxl.py"
DATA_ROOT = REPO.parent / "shared" / "dreambooth" / "dataset"
TQDM_SMOOTHING = 0.3  # tqdm's default
_RATE = re.compile(r"Steps:.*?(\d+)/(\d+) \[[^\]]*?([\d.]+)(it/s|s/it)")


def tqdm_rate(step_seconds: Sequence[float], smoothing: float = TQDM_SMOOTHING) -> float | None:
    """The it/s a tqdm bar shows after these steps (its bias-corrected EMA of step times, one update per step)."""
    if not step_seconds:
        return None
    beta, last = 1 - smoothing, 0.0
    for calls, dt in enumerate(step_seconds, start=1):
        last = smoothing * dt + beta * last
        ema_dt = last / (1 - beta**calls)
    return 1.0 / ema_dt


def last_tqdm_rate(log: str) -> tuple[int, float] | None:
    """(steps done, it/s) of a `Steps:` tqdm bar in a log, as shown when it first reached its last step.

    Not the bar's final line: the peer closes it only after saving and reloading the pipeline, and the rate
    shown then is averaged over that time too.
    """
    found = None
    for line in re.split(r"[\r\n]", log):
        match = _RATE.search(line)
        if match and (found is None or int(match.group(1)) > found[0]):
            value = float(match.group(3))
            found = int(match.group(1)), value if match.group(4) == "it/s" else 1.0 / value
    return found


def run_measured(cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path) -> dict:
    """Run a command to completion; its wall time, peak RSS (children included) and exit status."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)  # this child's (and its reaped children's) peak RSS
        process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": process.returncode,
        "wall_seconds": time.perf_counter() - t0,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "log": str(log_path),
        "command": " ".join(cmd),
    }


def save_model(model: str, folder: Path) -> Path:
    """The random-weight pipeline our runs build in-process, saved once for the peer (same weights: seed 0)."""
    if not (folder / "model_index.json").is_file():
        from para.core.models import build_random_pipeline

        build_random_pipeline(model, seed=0).save_pretrained(folder)
    return folder


def peer_side(args, model_dir: Path, out: Path, env: dict[str, str], repeat: int) -> dict:
    output_dir = out / "peer_out"
    accelerate = str(Path(sys.executable).with_name("accelerate"))
    cmd = [
        accelerate,
        "launch",
        "--cpu",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(args.peer_script),
        "--pretrained_model_name_or_path",
        str(model_dir),
        "--instance_data_dir",
        str(args.data_root / args.subject),
        "--instance_prompt",
        f"a photo of sks {args.class_word}",
        "--resolution",
        str(args.resolution),
        "--train_batch_size",
        "1",
        "--max_train_steps",
        str(args.steps),
        "--rank",
        str(args.rank),
        "--learning_rate",
        "1e-4",
        "--lr_scheduler",
        "constant",
        "--seed",
        "0",
        "--mixed_precision",
        "no",
        "--output_dir",
        str(output_dir),
    ]  # default tracker: tensorboard, skipped by accelerate when not installed
    result = run_measured(cmd, out / f"peer_{repeat}.log", env, args.peer_script.parent)
    rate = last_tqdm_rate(Path(result["log"]).read_text(errors="replace"))
    return {
        "side": "peer: diffusers train_dreambooth_lora_sdxl.py",
        "cache_latents": False,
        **result,
        "steps_done": rate[0] if rate else None,
        "it_per_s": rate[1] if rate else None,
        "median_step_seconds": None,
        "error": None if result["returncode"] == 0 and rate else _tail(result["log"]),
    }


def our_side(args, out: Path, env: dict[str, str], cache: bool, repeat: int) -> dict:
    run_dir = out / f"peer_ours_{'cached' if cache else 'uncached'}"
    cmd = [
        sys.executable,
        "run.py",
        "method=lora",
        "method.subset=attn",
        f"method.rank={args.rank}",
        f"model={args.model}",
        f"model.resolution={args.resolution}",
        f"subject={args.subject}",
        f"data.root={args.data_root}",
        f"steps={args.steps}",
        "train.batch_size=1",
        "train.mixed_precision=no",
        f"train.cache_latents={str(cache).lower()}",
        "train.log_every=1",
        "logger=none",
        "sample.enabled=false",
        "eval.enabled=false",
        f"run_dir={run_dir}",
        "overwrite=true",
        "seed=0",
    ]
    result = run_measured(cmd, out / f"peer_ours_{'cached' if cache else 'uncached'}_{repeat}.log", env, REPO)
    info, steps = {}, []
    if result["returncode"] == 0:
        info = read_json(run_dir / "metrics.json").get("train_info", {})
        events = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
        steps = [e["train/step_seconds"] for e in events if "train/step_seconds" in e]  # every step (log_every=1)
    return {
        "side": f"ours: run.py method=lora method.subset=attn train.cache_latents={str(cache).lower()}",
        "cache_latents": cache,
        **result,
        "steps_done": len(info.get("losses", [])) or None,
        "it_per_s": tqdm_rate(steps),
        "median_step_seconds": info.get("median_step_seconds"),
        "error": None if result["returncode"] == 0 else _tail(result["log"]),
    }


def combine_repeats(results: list[dict]) -> dict:
    """One record per side: median it/s and median step over the repeats that worked, the largest peak RSS."""
    ok = [r for r in results if not r["error"] and r["it_per_s"]]
    if not ok:
        return {**results[-1], "repeats": len(results), "it_per_s_all": []}
    median = lambda key: statistics.median(r[key] for r in ok) if ok[0][key] is not None else None  # noqa: E731
    return {
        **ok[-1],
        "repeats": len(results),
        "it_per_s_all": [r["it_per_s"] for r in ok],
        "it_per_s": median("it_per_s"),
        "median_step_seconds": median("median_step_seconds"),
        "wall_seconds": median("wall_seconds"),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
    }


def _tail(path: str, chars: int = 600) -> str:
    return Path(path).read_text(errors="replace")[-chars:]


def to_markdown(records: list[dict]) -> str:
    r0 = records[0]
    fmt = lambda v, spec: "–" if v is None else f"{v:{spec}}"  # noqa: E731
    lines = [
        f"# Peer side by side: LoRA r={r0['rank']} on attention q/k/v/out, {r0['model']} (RANDOM weights), "
        f"{r0['resolution']} px, batch 1, float32, CPU ({r0['provenance'].get('threads')} threads)",
        "",
        "| side | it/s (tqdm EMA), median | each run | median step s | process wall s | peak RSS MB | status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in records:
        status = "ok" if not r["error"] else f"failed (rc {r['returncode']}), see {r['log']}"
        runs = ", ".join(f"{v:.3g}" for v in r.get("it_per_s_all", []))
        lines.append(
            f"| {r['side']} | {fmt(r['it_per_s'], '.3g')} | {runs} | {fmt(r['median_step_seconds'], '.3g')} "
            f"| {fmt(r['wall_seconds'], '.0f')} | {fmt(r['peak_rss_mb'], '.0f')} | {status} |"
        )
    peer = next((r for r in records if r["side"].startswith("peer") and r["it_per_s"]), None)
    for r in records:
        if peer and r is not peer and r["it_per_s"]:
            work = "text encoders and VAE every step" if not r["cache_latents"] else "neither: cached"
            lines.append(
                f"\n{r['side']} ({work}; the peer runs the VAE every step, the text encoders once): "
                f"{r['it_per_s'] / peer['it_per_s']:.2f}× the peer's it/s, "
                f"{r['peak_rss_mb'] / peer['peak_rss_mb']:.2f}× its peak RSS."
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m para.bench.peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small", choices=["tiny", "small"])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, round-robin")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--subject", default="dog")
    parser.add_argument("--class-word", default="dog")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--peer-script", type=Path, default=PEER_SCRIPT)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP_NUM_THREADS for both sides (1: steady on a shared machine, as in para.bench.compare)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be >= 2 and --repeats >= 1")
    if not args.peer_script.is_file():
        parser.error(f"peer script {args.peer_script} not found (expected the copy in ../shared/peers)")
    if not (args.data_root / args.subject).is_dir():
        parser.error(f"subject photos {args.data_root / args.subject} not found; set --data-root")
    out = args.out.resolve()
    args.peer_script, args.data_root = args.peer_script.resolve(), args.data_root.resolve()
    # Same conditions for both processes: offline, no W&B upload, sleeping OpenMP waits (see para.bench.compare).
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "TQDM_DISABLE": "0",
    }
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    model_dir = save_model(args.model, out / "peer_model")
    runs: list[list[dict]] = [[], [], []]
    for repeat in range(args.repeats):  # round-robin, so a busy spell of the machine hits every side
        runs[0].append(peer_side(args, model_dir, out, env, repeat))
        runs[1].append(our_side(args, out, env, False, repeat))
        runs[2].append(our_side(args, out, env, True, repeat))
    sides = [combine_repeats(side) for side in runs]
    prov = provenance("cpu")
    if args.threads:
        prov["threads"] = args.threads
    records = [
        {
            **s,
            "model": args.model,
            "resolution": args.resolution,
            "rank": args.rank,
            "batch_size": 1,
            "dtype": "float32",
            "device": "cpu",
            "weights": "random",
            "provenance": prov,
        }
        for s in sides
    ]
    write_results(out, "peer", records, to_markdown(records))
    return 0 if all(not r["error"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
