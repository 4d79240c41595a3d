"""Re-score a run folder without retraining: `python -m eval runs/<...> [--backbones random]`.

Scores the run's samples (see `eval.score`) and replaces the `scores` key of its `metrics.json` atomically.
Options default to the run's own `run_info.eval`; flags override them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from eval.hub import BackboneUnavailable
from eval.options import RANDOM_BANNER, EvalOptions
from eval.score import DEFAULT_CACHE_DIR, SCORE_KEYS, read_json, score_run
from para.core.devices import check_device
from para.core.io import atomic_write_json


def update_metrics(run_dir: str | Path, scores: dict[str, Any]) -> dict[str, Any]:
    """Replace the `scores` key of `run_dir/metrics.json` (atomic write); returns the updated document."""
    path = Path(run_dir) / "metrics.json"
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    data["scores"] = scores
    atomic_write_json(path, data)
    return data


def format_scores(scores: dict[str, Any]) -> str:
    """Human-readable summary; starts with the random-backbones banner when any backbone is not pretrained."""
    lines = []
    if not scores.get("backbones_pretrained_all", False):
        flags = ", ".join(f"{k}={v}" for k, v in scores.get("backbones_pretrained", {}).items())
        lines.append(f"!!! {RANDOM_BANNER} ({flags}) !!!")
    for key in SCORE_KEYS:
        value = scores.get(key)
        lines.append(f"{key:>10}: {'n/a' if value is None else f'{value:.4f}'}")
    lines.append(
        f"{'images':>10}: {scores.get('n_images')} over {scores.get('n_prompts')} prompts, "
        f"{scores.get('n_real')} real photos"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run folder holding metrics.json and samples/")
    parser.add_argument("--backbones", choices=("pretrained", "random"), help="default: the run's eval.backbones")
    for f in fields(EvalOptions):
        if f.name != "backbones":
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), help=f"eval.{f.name}")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="real-photo embedding cache")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    parser.add_argument("--dry-run", action="store_true", help="print the scores; write nothing (metrics.json, cache)")
    parser.add_argument(
        "--no-wandb", action="store_true", help="do not push the new scores to the run's W&B run (default: push)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return rescore(args)
    except (BackboneUnavailable, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)  # a message, not a traceback: these are setup problems
        return 2


def rescore(args: argparse.Namespace) -> int:
    if not args.run_dir.is_dir():
        what = "is not a folder" if args.run_dir.exists() else "does not exist"
        raise ValueError(
            f"{args.run_dir} {what}; python -m eval takes a run folder (the one holding metrics.json and samples/), "
            "e.g. python -m eval runs/para/dog/steps200-seed0"
        )
    info = read_json(args.run_dir / "metrics.json")
    run_eval = (info.get("run_info") or {}).get("eval") if isinstance(info, dict) else None
    overrides = {f.name: getattr(args, f.name) for f in fields(EvalOptions)}
    opts = EvalOptions.from_any(run_eval, **overrides)
    check_device("--device" if args.device else "eval.device (the run's; --device overrides it)", opts.device)
    cache_dir = None if args.no_cache else args.cache_dir
    scores = score_run(args.run_dir, opts, cache_dir=cache_dir, write_cache=not args.dry_run)
    print(format_scores(scores))
    if not args.dry_run:
        update_metrics(args.run_dir, scores)
        print(f"updated {args.run_dir / 'metrics.json'}")
        wandb_info = info.get("wandb") if isinstance(info, dict) else None
        if wandb_info and not args.no_wandb:
            push_scores(args.run_dir, wandb_info, scores)
    return 0


def push_scores(run_dir: Path, wandb_info: dict[str, Any], scores: dict[str, Any]) -> None:
    """The run's W&B run gets the new `eval/*` summary and per-prompt table, as a finished run logs them."""
    from eval.score import protocol_named
    from para.tracking.loggers import WandbLogger, log_scores

    logger = WandbLogger.reopen(wandb_info, run_dir)
    try:
        log_scores(logger, run_dir, scores, protocol_named(scores.get("protocol")).score_keys)
    finally:
        logger.finish()
    where = "offline; `make wandb-sync` uploads it" if wandb_info.get("offline") else logger.run.url
    print(f"scores pushed to W&B run {wandb_info['id']} ({where})")


if __name__ == "__main__":
    sys.exit(main())
