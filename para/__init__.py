"""PaRa reproduction harness. The public API is loaded on first use (`import para` stays light and cycle-free:
every `para.*` import runs this file first):

    para.load_adapter(pipe, path, scale=1.0) -> handle (handle.remove() restores the base weights exactly)
    para.export_lora(source, out, format="lora" | "kohya" | "merged", dtype="fp16", ...)

See para/api.py and docs/adapters.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AdapterHandle", "export_lora", "load_adapter"]


def __getattr__(name: str) -> Any:  # PEP 562: import para.api (torch, diffusers) only when the API is used
    if name in __all__:
        from para import api

        return getattr(api, name)
    raise AttributeError(f"module 'para' has no attribute {name!r}")
