"""`make world` (`python -m world.build`): renders, VAE, evaluator, pretraining, subjects and the gate, from seeds.

Every stage's result is cached under `runs/.cache/world/<stage>-<digest>` by a digest of its settings, the code
of the world package and the stages it builds on, so that changing the pretraining settings does not retrain the
VAE. The finished world goes to `world/assets/` (the model as an ordinary `StableDiffusionXLPipeline` folder in
fp16, the evaluator, the subjects' photos, `build.json` with the settings, the digest and the gate figures) and
the subjects' configs to `conf/subject/<subject>.yaml`. A world whose digest matches `world/assets/build.json` is
up to date and not rebuilt. A world that fails its gate is written to `runs/world-failed/` for inspection and
never replaces the assets.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from world.assemble import assemble
from world.pretrain import PretrainSettings
from world.stages import ASSETS, WorldSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m world.build", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if world/assets is up to date")
    parser.add_argument("--out", type=Path, default=ASSETS, help="where the finished world goes")
    parser.add_argument("--settings", type=Path, help="a JSON file of WorldSettings fields to change")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = WorldSettings()
    if args.settings:
        changes = json.loads(args.settings.read_text())
        pretrain = {**asdict(settings.pretrain), **changes.pop("pretrain", {})}
        settings = WorldSettings(**{**asdict(settings), **changes, "pretrain": PretrainSettings(**pretrain)})
    return assemble(settings, args.out, args.force)


if __name__ == "__main__":
    sys.exit(main())
