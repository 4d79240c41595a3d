"""`make weights`: fetch everything a real run needs into the local Hugging Face / open_clip caches.

Run it once on a machine with internet; afterwards runs work offline (HF_HUB_OFFLINE=1). Each item is
tried on its own and the summary says which ones failed and why, so a partial download is visible.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from eval.clip_score import DEFAULT_MODEL as DEFAULT_CLIP_SCORE_MODEL
from para.core.models import SDXL_HUB_ID

# diffusers' folder layout without the duplicate full-precision / .bin files: ~7 GB in fp16 + the fp32 UNet
SDXL_PATTERNS = ["*.json", "*.txt", "tokenizer*/*", "*/diffusion_pytorch_model.safetensors", "*/model.safetensors"]
# a transformers CLIP folder: configs, tokenizer, processor and the safetensors weights (not .bin / TF / Flax)
CLIP_PATTERNS = ["*.json", "*.txt", "model.safetensors"]


def _hub(repo: str, patterns: list[str] | None = None) -> Callable[[], str]:
    def fetch() -> str:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo, allow_patterns=patterns)

    return fetch


def _open_clip(arch: str, tag: str) -> Callable[[], str]:
    def fetch() -> str:
        import open_clip

        open_clip.create_model(arch, pretrained=tag)
        return f"open_clip {arch}/{tag} cached"

    return fetch


def items(sdxl: str, dino: str, clip_arch: str, clip_tag: str, clip_score: str) -> dict[str, Callable[[], str]]:
    return {
        f"SDXL base ({sdxl})": _hub(sdxl, SDXL_PATTERNS),
        f"DINO ({dino})": _hub(dino),
        f"CLIP ({clip_arch}, {clip_tag})": _open_clip(clip_arch, clip_tag),
        f"CLIP-score model ({clip_score})": _hub(clip_score, CLIP_PATTERNS),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdxl", default=SDXL_HUB_ID)
    parser.add_argument("--dino", default="facebook/dino-vits16")
    parser.add_argument("--clip-arch", default="ViT-B-32")
    parser.add_argument("--clip-pretrained", default="openai")
    parser.add_argument("--clip-score-model", default=DEFAULT_CLIP_SCORE_MODEL, help="eval.clip_score_model")
    args = parser.parse_args(argv)
    failed = []
    fetches = items(args.sdxl, args.dino, args.clip_arch, args.clip_pretrained, args.clip_score_model)
    for name, fetch in fetches.items():
        print(f"fetching {name} ...", flush=True)
        try:
            print(f"  ok: {fetch()}")
        except Exception as err:  # noqa: BLE001 - report every failure, keep going with the other items
            first_line = (str(err).splitlines() or [""])[0][:300]
            print(f"  FAILED: {type(err).__name__}: {first_line}")
            failed.append(name)
    if failed:
        print(
            f"\n{len(failed)} item(s) could not be fetched: {', '.join(failed)}.\n"
            "Is there internet access (and `huggingface-cli login` for gated repos)? "
            "Alternatively copy the folders and set model.path=... / eval.dino=... to local paths."
        )
        return 1
    print("\nall weights cached; runs can now use HF_HUB_OFFLINE=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
