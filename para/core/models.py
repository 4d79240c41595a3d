"""Base models: SDXL 1.0 from weights, or SDXL-shaped models built in-process with random weights.

`tiny` and `small` keep SDXL's whole conditioning path (two CLIP text encoders whose hidden sizes add up to the
UNet's cross-attention width, pooled text embeddings, `time_ids`, an 8x VAE), so every command of the project
runs offline; `small` is wide enough (320-wide first block, like SDXL) for CPU benchmarks. Their numbers are
never paper numbers: runs record `model.kind` and `backbone weights random`.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from para.core.io import atomic_write_text

if TYPE_CHECKING:  # diffusers and transformers load when a model is built: a refusal never waits for them
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

SDXL_HUB_ID = "stabilityai/stable-diffusion-xl-base-1.0"
# Every StableDiffusionXLPipeline the harness builds or loads gets this. With `invisible_watermark` installed (SDXL's
# model card tells users to) diffusers stamps every sample by default, which moves DINO/CLIP/LPIPS/SSIM: samples are
# compared unstamped, and runs record it (`meta_info.watermarked`).
NO_WATERMARK = {"add_watermarker": False}


def watermarked(pipe: StableDiffusionXLPipeline) -> bool:
    """Whether `pipe` stamps an invisible watermark on its images."""
    return getattr(pipe, "watermark", None) is not None


# name: (UNet widths, transformer depth per block, text hidden sizes (enc1, enc2), VAE widths, heads per block)
RANDOM_SHAPES = {
    "tiny": dict(unet=(64, 128), depth=(1, 1), text=(32, 64), vae=(16, 16, 32, 32), head_dim=(8, 16), layers=1),
    "small": dict(unet=(320, 640), depth=(1, 2), text=(128, 256), vae=(32, 64, 64, 64), head_dim=(5, 10), layers=2),
}


class ModelLoadError(RuntimeError):
    """The base model's weights could not be loaded; the message names what was tried and the ways out."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(weights_dtype: str, device: torch.device) -> torch.dtype:
    if weights_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if weights_dtype not in dtypes:
        raise ValueError(f"model.weights_dtype={weights_dtype!r}; expected auto or one of {sorted(dtypes)}")
    return dtypes[weights_dtype]


@lru_cache(maxsize=1)
def clip_tokenizer_files() -> tuple[str, str]:
    """vocab.json + merges.txt of the CLIP BPE tokenizer, built from the vocabulary open_clip ships.

    The same 49,408-token vocabulary as openai/clip-vit-large-patch14, so tokenization matches real SDXL.
    """
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(m.split()) for m in merges]
    byte_chars = _bytes_to_unicode()
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(p) for p in pairs]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    cache = Path(os.environ.get("PARA_CACHE", Path.home() / ".cache" / "para")) / "clip_tokenizer"
    cache.mkdir(parents=True, exist_ok=True)
    # Atomic (temp file + rename): parallel sweep cells share this cache, and a cell reading a file another is
    # rewriting in place got a truncated vocabulary ("Token ... out of vocabulary").
    vocab_file = atomic_write_text(cache / "vocab.json", json.dumps({tok: i for i, tok in enumerate(vocab)}))
    merges_text = "#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n"
    merges_file = atomic_write_text(cache / "merges.txt", merges_text)
    return str(vocab_file), str(merges_file)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table (the printable stand-ins of the 256 byte values), in CLIP's order."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer() -> CLIPTokenizer:
    from transformers import CLIPTokenizer

    vocab_file, merges_file = clip_tokenizer_files()
    # transformers 5: vocab and merges must be positional (keywords silently give a broken 2-token tokenizer).
    tokenizer = CLIPTokenizer(vocab_file, merges_file)
    tokenizer.model_max_length = 77
    return tokenizer


def random_unet_config(kind: str) -> dict:
    """UNet2DConditionModel arguments of the SDXL-shaped random model `kind` (tiny | small)."""
    shape = RANDOM_SHAPES[kind]
    text1, text2 = shape["text"]
    time_dim = 8
    return dict(
        sample_size=shape["unet"][0] // 8,
        block_out_channels=shape["unet"],
        layers_per_block=shape["layers"],
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=shape["head_dim"],
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        transformer_layers_per_block=shape["depth"],
        projection_class_embeddings_input_dim=6 * time_dim + text2,  # 6 time_ids + pooled text embedding
        cross_attention_dim=text1 + text2,  # SDXL: 768 + 1280 = 2048
        norm_num_groups=32,
    )


def build_random_models(kind: str, seed: int = 0) -> dict[str, torch.nn.Module]:
    """The UNet, VAE and both text encoders of an SDXL-shaped model with random weights (`kind` = tiny | small),
    deterministic in `seed`; under `torch.device("meta")` they have every shape and no memory (`para.run.plan`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if kind not in RANDOM_SHAPES:
        raise ValueError(f"unknown random model kind {kind!r}; expected one of {sorted(RANDOM_SHAPES)}")
    shape = RANDOM_SHAPES[kind]
    torch.manual_seed(seed)
    text1, text2 = shape["text"]
    unet = UNet2DConditionModel(**random_unet_config(kind))
    vae = AutoencoderKL(
        block_out_channels=list(shape["vae"]),
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(shape["vae"]),  # 4 blocks -> 3 downsamplings -> 8x
        up_block_types=["UpDecoderBlock2D"] * len(shape["vae"]),
        latent_channels=4,
        norm_num_groups=16,
        scaling_factor=0.13025,  # SDXL's VAE scaling factor
    )

    def text_config(hidden: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_attention_heads=4,
            num_hidden_layers=3,
            vocab_size=49408,
            max_position_embeddings=77,
            projection_dim=hidden,
            hidden_act="gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )

    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": CLIPTextModel(text_config(text1)),
        "text_encoder_2": CLIPTextModelWithProjection(text_config(text2)),
    }


def build_random_pipeline(kind: str, seed: int = 0) -> StableDiffusionXLPipeline:
    """An SDXL-shaped pipeline with random weights (`kind` = tiny | small), deterministic in `seed`."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    scheduler = EulerDiscreteScheduler(  # SDXL base's training schedule (scaled-linear betas, 1000 steps)
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        **build_random_models(kind, seed),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        scheduler=scheduler,
        **NO_WATERMARK,
    )
    # A name, as from_pretrained gives one: adapter files record it and refuse another base model (para.api).
    pipe.register_to_config(_name_or_path=random_model_id(kind, seed))
    return pipe


def random_model_id(kind: str, seed: int) -> str:
    return f"random-{kind}-seed{seed}"


# `dtype=` in from_pretrained / from_single_file: diffusers accepts it from 0.40.0 on (huggingface/diffusers#14162);
# older versions drop it silently and load fp32 weights. pyproject.toml pins the same minimum.
MIN_DIFFUSERS = "0.40.0"


def check_diffusers_version(version: str | None = None) -> None:
    """ModelLoadError if the installed diffusers is older than the loading code needs."""
    import diffusers
    from packaging.version import Version

    found = version or diffusers.__version__
    if Version(found) < Version(MIN_DIFFUSERS):
        raise ModelLoadError(
            f"diffusers {found} is too old: the base model is loaded with `dtype=`, which diffusers accepts from "
            f"{MIN_DIFFUSERS} on (older versions load fp32 weights or fail). pip install 'diffusers>={MIN_DIFFUSERS}'"
        )


def load_pretrained_pipeline(
    path: str,
    revision: str | None,
    variant: str | None,
    dtype: torch.dtype,
    vae_path: str | None = None,
    config_path: str | None = None,
) -> StableDiffusionXLPipeline:
    """SDXL from a hub id, a local diffusers folder, or a single-file checkpoint; ModelLoadError otherwise.

    `variant` picks the folder's weight files (`fp16`: `*.fp16.safetensors`), `vae_path` a VAE loaded instead of
    the base model's (which is then never read), `config_path` the diffusers folder (or hub id) whose configs and
    tokenizers give a single-file checkpoint its pipeline (`config=` of from_single_file; needed offline).
    Tries the local cache first so that a machine without network fails in seconds, not after retries.
    """
    from diffusers import StableDiffusionXLPipeline

    check_diffusers_version()
    check_weights_available(path, revision)
    components = {**NO_WATERMARK, **({"vae": _load_vae(vae_path, dtype, _offline())} if vae_path else {})}

    def load(is_file: bool, local_only: bool) -> StableDiffusionXLPipeline:
        if is_file:
            return StableDiffusionXLPipeline.from_single_file(
                path, config=config_path, dtype=dtype, local_files_only=local_only, **components
            )
        return StableDiffusionXLPipeline.from_pretrained(
            path, revision=revision, variant=variant, dtype=dtype, local_files_only=local_only, **components
        )

    return local_first(path, config_path, load)


def local_first(path: str, config_path: str | None, load: Callable[[bool, bool], Any]) -> Any:
    """`load(is_file, local_only)` from the local cache first (so that a machine without network fails in seconds,
    not after retries), then from the hub; ModelLoadError naming every attempt and the ways out."""
    is_file = path.endswith((".safetensors", ".ckpt"))
    tries = [True] if (is_file or _offline() or Path(path).is_dir()) else [True, False]
    attempts = []
    for local_only in tries:
        try:
            return load(is_file, local_only)
        except Exception as err:  # noqa: BLE001 - hub/IO errors come in many types; all mean "not loadable"
            where = "local cache" if local_only else "model hub"
            attempts.append(f"{path} from the {where}: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
    raise ModelLoadError(missing_weights_message(path, attempts, single_file=is_file and not config_path))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


def check_weights_available(path: str, revision: str | None = None) -> None:
    """ModelLoadError within milliseconds (before the resource plan and the load) for weights that cannot be
    there: a missing single file, a pickle, or, offline, a hub id that is not in the local cache."""
    if path.endswith(".ckpt"):
        raise ModelLoadError(f"{path}: .ckpt files are pickles and are not loaded; convert to .safetensors first")
    if path.endswith(".safetensors"):
        if not Path(path).is_file():
            raise ModelLoadError(missing_weights_message(path, [f"{path}: no such file"]))
        return
    if Path(path).is_dir() or not _offline():
        return
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(path, "model_index.json", revision=revision), str):
        tried = f"{path} from the local cache: not there (HF_HUB_OFFLINE=1: the hub is not asked)"
        raise ModelLoadError(missing_weights_message(path, [tried]))


def _load_vae(vae_path: str, dtype: torch.dtype, offline: bool) -> AutoencoderKL:
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(vae_path, dtype=dtype, local_files_only=offline)
    except Exception as err:  # noqa: BLE001 - as above
        message = f"model.vae_path={vae_path}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
        raise ModelLoadError(missing_weights_message(vae_path, [message])) from err


def missing_weights_message(path: str, attempts: list[str], single_file: bool = False) -> str:
    tried = "\n".join(f"  - {a}" for a in attempts)
    configs = (
        "  - a single file needs the pipeline's configs and tokenizers (offline too): "
        "model.config_path=/path/to/an-sdxl-diffusers-folder\n"
        if single_file
        else ""
    )
    return (
        f"Could not load the base model weights.\nTried:\n{tried}\n"
        "Ways out:\n"
        f"{configs}"
        "  - point at weights you have: model.path=/path/to/sdxl-folder-or-file.safetensors\n"
        "  - fetch them on a machine with internet: make weights\n"
        "  - or run offline on the tiny random-weight model: model=tiny"
    )


def load_pipeline(model_cfg, device: torch.device) -> StableDiffusionXLPipeline:
    """The base pipeline for a model config, frozen, on `device`, in the configured weights dtype."""
    dtype = resolve_dtype(model_cfg.weights_dtype, device)
    if model_cfg.kind == "pretrained":
        pipe = load_pretrained_pipeline(
            model_cfg.path or SDXL_HUB_ID,
            model_cfg.revision,
            model_cfg.variant,
            dtype,
            model_cfg.vae_path,
            model_cfg.config_path,
        )
    else:
        pipe = build_random_pipeline(model_cfg.kind, model_cfg.init_seed)
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)
        module.eval()
    return pipe.to(device)


def model_id(model_cfg) -> str:
    """The base-model identity recorded in adapters (adapters refuse to load onto another base model)."""
    if model_cfg.kind == "pretrained":
        return f"{model_cfg.path or SDXL_HUB_ID}@{model_cfg.revision or 'main'}"
    return random_model_id(model_cfg.kind, model_cfg.init_seed)
