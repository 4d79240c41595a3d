"""Trained adapters as files every SDXL tool reads, exactly (docs/adapters.md).

    python -m para.export runs/para/dog/steps200-seed0 --format kohya --out exported/para-dog.safetensors

PaRa's change to a layer is exactly low rank, W − W0 = −Q(QᵀW0), so a PaRa adapter *is* a LoRA with up = −Q and
down = QᵀW0 at scale 1 (factors.py). Written in the LoRA formats (formats.py) it loads in diffusers, ComfyUI,
A1111/Forge, InvokeAI and kohya's sd-scripts with no code of this project; `merged` writes a whole diffusers UNet
(merged.py). Combined PaRa adapters, `para_authors` and our LoRA export the same way; other methods are refused as
LoRA files with the reason (factors.NOT_LOW_RANK), and `merged` bakes them into the UNet (merged.bake). The
command line and the hub upload are in __main__.py and hub.py.
"""

from para.export.convert import export
from para.export.factors import EXACT, NOT_LOW_RANK, LowRank, NotExportable, low_rank_factors
from para.export.formats import FORMATS, kohya_key

__all__ = ["EXACT", "FORMATS", "NOT_LOW_RANK", "LowRank", "NotExportable", "export", "kohya_key", "low_rank_factors"]
