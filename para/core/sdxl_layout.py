"""SDXL 1.0 base's folder layout, written offline: its configs and tokenizers, optionally random weights.

`write_configs(dest)` (`python -m para.core.sdxl_layout DIR`) writes a diffusers folder without weights
(`model_index.json`, each component's config, both tokenizers: the CLIP BPE vocabulary open_clip ships,
`tokenizer_2` padding with "!" as SDXL's does): what `model.config_path` needs to load a single-file SDXL
checkpoint offline. `write_random_sdxl(dest)` adds random weights as the hub's fp16 variant files
(`unet/diffusion_pytorch_model.fp16.safetensors`, `text_encoder/model.fp16.safetensors` with the hub's `text_model.`
keys, …), so `model.path=<dest> model.variant=fp16` loads a pipeline of SDXL's real size through diffusers' real
loading path (`make rehearsal`). Random weights: never a quality number.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from para.core.io import atomic_save_safetensors, atomic_write_json, atomic_write_text
from para.core.models import clip_tokenizer_files
from para.core.sdxl_architecture import CONFIG_FILES, MODELS, build_component, sdxl_config, sdxl_configs

WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model",
                "text_encoder_2": "model"}  # fmt: skip
PAD_TOKENS = {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"}  # SDXL's two tokenizers differ only in padding
COMPLETE = ".complete"


def write_tokenizer(folder: Path, pad_token: str) -> None:
    """A CLIP tokenizer folder as on the hub: vocab.json, merges.txt, tokenizer_config, special_tokens_map."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_tokenizer_files()
    shutil.copyfile(vocab, folder / "vocab.json")
    shutil.copyfile(merges, folder / "merges.txt")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    special["pad_token"] = pad_token
    atomic_write_json(folder / "special_tokens_map.json", special)
    config = {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    atomic_write_json(folder / "tokenizer_config.json", config)


def write_configs(dest: str | Path, configs: dict[str, dict] | None = None) -> Path:
    """SDXL 1.0 base's configs and tokenizers in diffusers' folder layout (no weights). `configs` replaces the
    model components' configs (tests write a tiny architecture through the same code)."""
    dest = Path(dest)
    configs = {**sdxl_configs(), **(configs or {})}
    atomic_write_json(dest / "model_index.json", sdxl_config("model_index"))
    for component, file in CONFIG_FILES.items():
        atomic_write_json(dest / file, configs.get(component) or sdxl_config(component))
    for name, pad in PAD_TOKENS.items():
        write_tokenizer(dest / name, pad)
    return dest


def _hub_keys(component: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hub files' key names: transformers ≥ 5.6 flattened CLIPTextModel (no `text_model.` prefix); the
    SDXL files keep it, and loading them goes through transformers' conversion as with the real weights."""
    if component != "text_encoder":
        return state
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}


@torch.no_grad()
def write_random_weights(dest: Path, configs: dict[str, dict], dtype=torch.float16, variant="fp16", seed=0) -> None:
    """Each component with random weights (PyTorch's / transformers' own initialisation) in `dtype`, one at a
    time (the UNet alone is 5.1 GB in fp16), as `<component>/<stem>.<variant>.safetensors`."""
    default = torch.get_default_dtype()
    for index, component in enumerate(MODELS):
        torch.manual_seed(seed + index)
        torch.set_default_dtype(dtype)  # initialised in place in `dtype`: no fp32 copy of the UNet
        try:
            model = build_component(component, configs[component])
        finally:
            torch.set_default_dtype(default)
        state = {k: v.contiguous() for k, v in _hub_keys(component, model.state_dict()).items()}
        del model
        path = dest / component / f"{WEIGHT_STEMS[component]}.{variant}.safetensors"
        atomic_save_safetensors(state, path, metadata={"format": "pt", "para": "random weights, make rehearsal"})
        del state


def write_random_sdxl(dest: str | Path, seed: int = 0, configs: dict[str, dict] | None = None) -> Path:
    """A real-layout SDXL 1.0 base folder with random fp16 weights, built once: an existing complete folder is
    kept; the folder appears only when complete (built under a temporary name, then renamed)."""
    dest = Path(dest)
    if (dest / COMPLETE).is_file():
        return dest
    if dest.exists():
        raise FileExistsError(f"{dest} exists but was not built here (no {COMPLETE} marker); move it away")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # our own interrupted build
    t0 = time.perf_counter()
    configs = {**sdxl_configs(), **(configs or {})}
    write_configs(tmp, configs)
    write_random_weights(tmp, configs, seed=seed)
    info = {"what": "SDXL 1.0 base layout, RANDOM weights (fp16 variant files)", "seed": seed}
    atomic_write_text(tmp / COMPLETE, json.dumps({**info, "seconds": time.perf_counter() - t0}) + "\n")
    tmp.rename(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    """`python -m para.core.sdxl_layout DIR`: SDXL 1.0's configs and tokenizers, for model.config_path offline."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dest", help="folder to write (configs and tokenizers, no weights)")
    print(f"wrote {write_configs(parser.parse_args(argv).dest)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
