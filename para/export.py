"""Export a trained PaRa run as a plain diffusers UNet with the merged weights (I − QQᵀ)W0.

    python -m para.export runs/para/dog/steps200-seed0 --out exported/para-dog-unet

The result needs no code of this project: `UNet2DConditionModel.from_pretrained(out)` and swap it into a stock
`StableDiffusionXLPipeline`. Sampling then costs exactly the base model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from para.adapter import PaRa, unwrap_merged
from para.core.models import load_pipeline, model_id, resolve_device


def export_merged_unet(run_dir: Path, out_dir: Path, device: str = "cpu") -> Path:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.method.name != PaRa.name:
        raise ValueError(f"{run_dir} is a {cfg.method.name!r} run; merged export is for 'para' runs")
    pipe = load_pipeline(cfg.model, resolve_device(device))
    method = PaRa(cfg.method, model_id(cfg.model))
    method.attach(pipe.unet)
    method.load_file(pipe.unet, run_dir / "adapter.safetensors")
    unet = unwrap_merged(pipe.unet)
    unet.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(f"merged UNet written to {export_merged_unet(args.run_dir, args.out, args.device)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
