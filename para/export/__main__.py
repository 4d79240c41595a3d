"""`python -m para.export <run folder> --format {lora,kohya,merged} --out <path> [--dtype fp16|bf16|fp32]`.

    python -m para.export runs/para/dog/steps200-seed0 --format lora  --out exported/para-dog.safetensors
    python -m para.export runs/para/dog/steps200-seed0 --format kohya --out exported/para-dog-kohya.safetensors
    python -m para.export runs/para/dog/steps200-seed0 --format merged --out exported/para-dog-unet
    python -m para.export runs/para/dog/steps200-seed0 --format kohya --out x.safetensors --push-to-hub me/para-dog

The source is a run folder or an adapter file of this project (a combined PaRa adapter included). An existing
--out is replaced only with --overwrite. Details: docs/adapters.md.
"""

from __future__ import annotations

import argparse
import sys

from para.api import export_lora
from para.core.method import AdapterFileError
from para.core.models import ModelLoadError
from para.export.factors import NotExportable
from para.export.formats import DTYPES, FORMATS
from para.export.hub import HubError

USER_ERRORS = (AdapterFileError, NotExportable, ModelLoadError, HubError, FileExistsError, OSError, ValueError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m para.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run folder, or an adapter .safetensors of this project")
    parser.add_argument("--format", choices=FORMATS, default="lora", help="default: %(default)s")
    parser.add_argument("--out", required=True, help="the .safetensors file (lora, kohya) or folder (merged)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp16", help="default: %(default)s")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--device", default="cpu", help="where the base model is loaded (default: %(default)s)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload file + model card to <user>/<name>")
    parser.add_argument("--private", action="store_true", help="create the hub repo private")
    args = parser.parse_args(argv)

    try:
        out = export_lora(
            args.source,
            args.out,
            args.format,
            args.dtype,
            overwrite=args.overwrite,
            device=args.device,
            push_to_hub=args.push_to_hub,
            private=args.private or None,
        )
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.format}, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
