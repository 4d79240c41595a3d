"""SDXL 1.0 base's architecture, shipped with the package: every component's config, no weights.

The configs are the hub's own files (stabilityai/stable-diffusion-xl-base-1.0: `model_index.json`, `unet/`,
`vae/`, `text_encoder/`, `text_encoder_2/config.json`, `scheduler/scheduler_config.json`), so parameter counts,
FLOPs and memory plans can be computed exactly on any machine (meta or fake tensors: every shape, no memory),
and a single-file checkpoint or a random-weight rehearsal folder can be given SDXL's real layout offline.
`architecture_of(model_cfg)` says where a run's shapes come from (these configs, a local or cached folder's, or the
tiny/small random models) and `build_models` builds them without weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

_HERE = Path(__file__).parent
SDXL_CONFIG_PATH = _HERE / "sdxl_unet_config.json"
SDXL_TOTAL_PARAMS = 2_567_463_684  # diffusers UNet2DConditionModel of stabilityai/stable-diffusion-xl-base-1.0
# Parameters of the other components (CLIP ViT-L/14 text model, OpenCLIP ViT-bigG/14 text model + projection, VAE).
SDXL_COMPONENT_PARAMS = {
    "unet": SDXL_TOTAL_PARAMS,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
    "vae": 83_653_863,
}
MODELS = ("unet", "vae", "text_encoder", "text_encoder_2")  # the components with weights
# component -> its config file inside a diffusers folder
CONFIG_FILES = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}


def sdxl_config(component: str) -> dict:
    """The shipped config of one SDXL 1.0 base component (`unet`, `vae`, `text_encoder`, `text_encoder_2`,
    `scheduler`) or the pipeline's `model_index`."""
    name = "sdxl_model_index.json" if component == "model_index" else f"sdxl_{component}_config.json"
    path = _HERE / name
    if not path.is_file():
        raise ValueError(f"no shipped SDXL config for {component!r}; expected one of {[*CONFIG_FILES, 'model_index']}")
    return json.loads(path.read_text())


def sdxl_unet_config() -> dict:
    """The diffusers config of SDXL 1.0 base's UNet (unet/config.json), shipped with the package."""
    return sdxl_config("unet")


def folder_configs(folder: str | Path) -> dict[str, dict]:
    """The model components' configs of a diffusers pipeline folder (weights need not be there)."""
    folder = Path(folder)
    return {name: json.loads((folder / CONFIG_FILES[name]).read_text()) for name in MODELS}


def scheduler_config(architecture: str) -> dict:
    """The noise scheduler's config of an architecture (`build_models`' names): a folder's own, else SDXL's."""
    path = Path(architecture) / "scheduler" / "scheduler_config.json"
    return json.loads(path.read_text()) if path.is_file() else sdxl_config("scheduler")


def vae_scale_factor(vae: nn.Module) -> int:
    """Pixels per latent side: 2 per downsampling block, as diffusers' pipelines compute it (SDXL: 8)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def sdxl_configs() -> dict[str, dict]:
    return {name: sdxl_config(name) for name in MODELS}


def build_component(name: str, config: dict) -> nn.Module:
    """One model component from its config, on the current default device / tensor mode (meta, fake, cpu)."""
    if name in ("unet", "vae"):
        from diffusers import AutoencoderKL, UNet2DConditionModel  # slow import, only when needed

        cls = UNet2DConditionModel if name == "unet" else AutoencoderKL
        return cls.from_config(config)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModel if name == "text_encoder" else CLIPTextModelWithProjection
    # the dtype a folder was saved in is not the one it is loaded in (from_pretrained(dtype=) decides)
    fields = {
        k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "torch_dtype", "dtype")
    }
    return cls(CLIPTextConfig(**fields))


def build_sdxl_unet_meta() -> nn.Module:
    """SDXL's UNet2DConditionModel on the meta device: every shape, no memory, no weights."""
    with torch.device("meta"):
        return build_component("unet", sdxl_unet_config())


def build_unet_meta(model_cfg) -> nn.Module:
    """The UNet of `model_cfg` on the meta device (every shape, no memory, no weights): SDXL's for pretrained
    weights, the random model's otherwise."""
    if model_cfg.kind == "pretrained":
        return build_sdxl_unet_meta()
    from diffusers import UNet2DConditionModel

    from para.core.models import random_unet_config

    with torch.device("meta"):
        return UNet2DConditionModel(**random_unet_config(model_cfg.kind))


def architecture_of(model_cfg) -> tuple[str, str | None]:
    """(architecture, note): where the base model's shapes come from, without loading any weights."""
    from para.core.models import SDXL_HUB_ID  # diffusers: imported only when needed

    if model_cfg.kind != "pretrained":
        return f"random-{model_cfg.kind}", None
    path = model_cfg.path or SDXL_HUB_ID
    single = path.endswith((".safetensors", ".ckpt"))
    folder = model_cfg.config_path if single else path
    if folder and (Path(folder) / "model_index.json").is_file():
        return str(Path(folder).resolve()), None
    if folder and not single:
        cached = _cached_hub_folder(folder, model_cfg.revision)
        if cached:
            return cached, None
    if folder in (None, SDXL_HUB_ID):
        return "sdxl", None
    return "sdxl", f"the configs of {folder} are not on this machine: SDXL 1.0 base's architecture assumed"


def is_sdxl_size(model_cfg) -> bool:
    """Whether the base model has SDXL's real size (its UNet's block widths and transformer depths), read from
    configs only: SDXL's weights, or a folder of its layout (`make rehearsal`); not the random tiny/small models or
    a small pretrained one (the world model). A model whose configs are not on this machine is not taken for SDXL
    (the weights check says what is missing)."""
    architecture, note = architecture_of(model_cfg)
    if architecture.startswith("random-") or note is not None:
        return False
    if architecture == "sdxl":
        return True
    try:
        unet = json.loads((Path(architecture) / CONFIG_FILES["unet"]).read_text())
    except (OSError, ValueError):  # a folder without a readable UNet config: loading it fails anyway
        return False
    keys = ("block_out_channels", "transformer_layers_per_block")
    return all(unet.get(key) == sdxl_unet_config()[key] for key in keys)


def _cached_hub_folder(repo: str, revision: str | None) -> str | None:
    """The local snapshot of a hub repo if its configs are cached (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    files = ("model_index.json", *CONFIG_FILES.values())
    try:
        found = [try_to_load_from_cache(repo, file, revision=revision) for file in files]
    except ValueError:  # not a hub id (HFValidationError): a local folder that is not there, e.g. before `make world`
        return None
    return str(Path(found[0]).parent) if all(isinstance(f, str) for f in found) else None


def build_models(architecture: str, dtype: torch.dtype, device: str = "meta") -> dict[str, nn.Module]:
    """The base model's UNet, VAE and text encoders on the meta device (or, to check the counts against real
    tensors, with random weights on the CPU), in `dtype`."""
    from para.core.models import build_random_models

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in `dtype` (as `from_pretrained(dtype=)` loads), no conversion
    try:
        with torch.device(device):
            if architecture.startswith("random-"):
                models = build_random_models(architecture.removeprefix("random-"))
            else:
                configs = sdxl_configs() if architecture == "sdxl" else folder_configs(architecture)
                models = {name: build_component(name, configs[name]) for name in MODELS}
    finally:
        torch.set_default_dtype(default)
    return {name: model.requires_grad_(False).eval() for name, model in models.items()}
