"""Evaluation backbones: DINO ViT-S/16, CLIP ViT-B/32 and LPIPS, with real or seeded random weights.

DreamBench (PAPER.md §6) scores subject fidelity with DINO ViT-S/16 CLS embeddings and CLIP ViT-B/32 image
embeddings, and text alignment with CLIP image-text cosine. `backbones="random"` builds the same
architectures with deterministic random weights and never touches the network: for tests and offline smoke
runs only, and every score says so (`pretrained` on each backbone). LPIPS uses real weights in both modes
when they are installed (see `eval.lpips_weights`). Pretrained weights come from a local path or the local
hub cache, or else fail fast with a message naming the way out (see `eval.hub`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from eval.embedders import Backbones, ClipEmbedder, DinoEmbedder, LpipsScorer, as_embedding, resolve_device
from eval.hub import cached_hub_file, offline_reason, unavailable
from eval.lpips_weights import GET_WEIGHTS, checkpoint_path, load_lpips
from eval.options import EvalOptions

__all__ = [
    "Backbones",
    "ClipEmbedder",
    "DinoEmbedder",
    "LpipsScorer",
    "as_embedding",
    "load_backbones",
    "load_clip",
    "load_dino",
    "load_lpips_scorer",
    "missing_backbones",
    "resolve_device",
]

log = logging.getLogger(__name__)

# Seeds of the random-weight backbones: fixed so cached real-photo embeddings stay valid across processes.
DINO_SEED, CLIP_SEED = 0, 1


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Deterministic weight initialisation without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def dino_vits16_config() -> Any:
    """`ViTConfig` of facebook/dino-vits16 (ViT-S/16: width 384, 12 layers, 6 heads, 224 px)."""
    from transformers import ViTConfig

    return ViTConfig(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        patch_size=16,
        image_size=224,
        qkv_bias=True,
    )


def _load_dino_pretrained(name: str) -> nn.Module:
    from transformers import ViTModel

    tried: list[str] = []
    if Path(name).expanduser().exists():
        try:
            return ViTModel.from_pretrained(Path(name).expanduser(), add_pooling_layer=False, local_files_only=True)
        except (OSError, ValueError) as err:
            raise unavailable("DINO", [f"local folder {name}"], "eval.dino", str(err)) from err
    try:
        return ViTModel.from_pretrained(name, add_pooling_layer=False, local_files_only=True)
    except (OSError, ValueError) as err:
        tried.append(f"Hugging Face cache for {name!r} ({type(err).__name__})")
    reason = offline_reason()
    if reason is not None:
        raise unavailable("DINO", tried, "eval.dino", reason)
    try:
        return ViTModel.from_pretrained(name, add_pooling_layer=False)
    except (OSError, ValueError) as err:
        raise unavailable("DINO", [*tried, f"download of {name!r}"], "eval.dino", str(err)) from err


def load_dino(opts: EvalOptions) -> DinoEmbedder:
    """DINO ViT-S/16 from `opts.dino` (hub id or local folder), or seeded random weights."""
    if opts.pretrained:
        model = _load_dino_pretrained(opts.dino)
    else:
        from transformers import ViTModel

        with seeded(DINO_SEED):
            model = ViTModel(dino_vits16_config(), add_pooling_layer=False)
    device = resolve_device(opts.device)
    model.float().eval().requires_grad_(False).to(device)  # float: hub weights may load in their stored dtype
    return DinoEmbedder(model, opts.dino, opts.pretrained, device, opts.batch_size)


def _quick_gelu(arch: str, tag: str) -> bool:
    """OpenAI CLIP weights were trained with QuickGELU; open_clip's plain `ViT-B-32` config uses GELU.

    Follow the tag's setting; for a checkpoint file and for random weights follow the `openai` tag, the
    weights this harness specifies.
    """
    table = open_clip_tags()
    cfg = table.get_pretrained_cfg(arch, tag) or table.get_pretrained_cfg(arch, "openai") or {}
    return bool(cfg.get("quick_gelu", False))


@functools.cache
def open_clip_tags() -> Any:
    """open_clip's table of pretrained tags (`open_clip.pretrained`: where each tag's weights live, its
    normalisation), read without importing open_clip itself. `import open_clip` pulls in timm, which imports
    W&B when installed: ~5 s of CPU that a run refused for missing weights would spend only to learn a hub id.
    The table's module imports nothing of open_clip but its constants, so it is executed as a submodule of a
    private alias of open_clip's folder; the real package is used when already imported or when that fails."""
    if "open_clip" in sys.modules:
        return importlib.import_module("open_clip.pretrained")
    try:
        spec = importlib.util.find_spec("open_clip")
        alias = types.ModuleType(_OPEN_CLIP_ALIAS)
        alias.__path__ = list(spec.submodule_search_locations)
        sys.modules.setdefault(_OPEN_CLIP_ALIAS, alias)
        return importlib.import_module(f"{_OPEN_CLIP_ALIAS}.pretrained")
    except Exception:  # another open_clip layout: the slow, sure way
        return importlib.import_module("open_clip.pretrained")


_OPEN_CLIP_ALIAS = "_para_open_clip_tags"


def _open_clip_source(arch: str, source: str) -> tuple[str, str | None, dict[str, Any]]:
    """(model name, pretrained file or None, the tag's settings) for open_clip, resolved without downloads."""
    path = Path(source).expanduser()
    if path.is_dir():
        return f"local-dir:{path}", None, {}
    if path.is_file():
        return arch, str(path), {}
    table = open_clip_tags()
    cfg = table.get_pretrained_cfg(arch, source)
    if not cfg:
        raise ValueError(
            f"eval.clip_pretrained={source!r} is neither a file, a folder, nor an open_clip tag for {arch}; "
            f"tags: {table.list_pretrained_tags_by_model(arch)}"
        )
    tried = []
    if cfg.get("hf_hub"):
        repo = cfg["hf_hub"].strip("/")
        tried.append(f"Hugging Face cache of {repo}")
        cached = cached_hub_file(repo, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
        if cached:
            return arch, cached, cfg
    if cfg.get("url"):
        url_cache = Path("~/.cache/clip").expanduser() / Path(cfg["url"]).name  # open_clip's URL download cache
        tried.append(str(url_cache))
        if url_cache.is_file():
            return arch, str(url_cache), cfg
    reason = offline_reason()
    if reason is not None:
        raise unavailable(f"CLIP {arch}/{source}", tried, "eval.clip_pretrained", reason)
    return arch, source, {}  # the hub answers: let open_clip download the tag


def _load_hf_clip(path: Path, device: torch.device) -> tuple[Callable, Callable, Callable, Callable]:
    """A transformers CLIP folder (e.g. a snapshot of openai/clip-vit-base-patch32), local files only."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(path, local_files_only=True).float().eval().requires_grad_(False).to(device)
    processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def preprocess(image: Image.Image) -> Tensor:
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    def tokenize(texts: list[str]) -> dict[str, Tensor]:
        out = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    return model.get_image_features, model.get_text_features, preprocess, tokenize


def load_clip(opts: EvalOptions) -> ClipEmbedder:
    """CLIP `opts.clip_arch` with `opts.clip_pretrained` (tag, checkpoint file, folder), or seeded random."""
    import open_clip

    device = resolve_device(opts.device)
    name = f"{opts.clip_arch}/{opts.clip_pretrained}"
    source = Path(opts.clip_pretrained).expanduser()
    if opts.pretrained and (source / "config.json").is_file() and not (source / "open_clip_config.json").exists():
        try:
            parts = _load_hf_clip(source, device)
        except (OSError, ValueError) as err:
            raise unavailable("CLIP", [f"transformers folder {source}"], "eval.clip_pretrained", str(err)) from err
        return ClipEmbedder(*parts, name=name, pretrained=True, device=device, batch_size=opts.batch_size)

    from open_clip.transform import PreprocessCfg, image_transform_v2

    quick_gelu = _quick_gelu(opts.clip_arch, opts.clip_pretrained)
    if opts.pretrained:
        model_name, pretrained, tag_cfg = _open_clip_source(opts.clip_arch, opts.clip_pretrained)
        # The tag's own normalisation and resize mode, which open_clip only applies when given the tag itself.
        preprocess_cfg = {k: v for k, v in tag_cfg.items() if k in {f.name for f in fields(PreprocessCfg)}}
        quick_gelu = quick_gelu and not model_name.startswith("local-dir:")  # its own config decides
        try:
            model = open_clip.create_model(
                model_name,
                pretrained=pretrained,
                force_quick_gelu=quick_gelu,
                force_preprocess_cfg=preprocess_cfg,
                require_pretrained=True,
            )
        except (OSError, RuntimeError, ValueError) as err:
            raise unavailable(
                "CLIP", [f"open_clip {model_name} with {pretrained}"], "eval.clip_pretrained", str(err)
            ) from err
    else:
        model_name = opts.clip_arch
        with seeded(CLIP_SEED), warnings.catch_warnings(), _quiet("root"):
            warnings.simplefilter("ignore")
            model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu)
    model.eval().requires_grad_(False).to(device)
    # open_clip's evaluation transform (resize shortest side, centre crop, the weights' own normalisation)
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    tokenizer = open_clip.get_tokenizer(model_name)
    return ClipEmbedder(
        encode_image=model.encode_image,
        encode_text=lambda text: model.encode_text(text),
        preprocess=preprocess,
        tokenize=lambda texts: {"text": tokenizer(texts)},
        name=name,
        pretrained=opts.pretrained,
        device=device,
        batch_size=opts.batch_size,
    )


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence open_clip's 'initialized randomly' warning: random weights are what was asked for."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_lpips_scorer(opts: EvalOptions) -> LpipsScorer:
    """LPIPS v0.1 with real weights. With random backbones and no weights installed: random trunk, flagged."""
    device = resolve_device(opts.device)
    try:
        model, pretrained = load_lpips(opts.lpips_net), True
    except FileNotFoundError:
        if opts.pretrained:
            raise
        import lpips

        log.warning("LPIPS weights missing (%s): random LPIPS trunk, scores flagged as not pretrained", GET_WEIGHTS)
        with seeded(DINO_SEED), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, pretrained = lpips.LPIPS(net=opts.lpips_net, pnet_rand=True, verbose=False), False
        model.eval().requires_grad_(False)
    return LpipsScorer(model.to(device), opts.lpips_net, pretrained, device)


def load_backbones(opts: EvalOptions) -> Backbones:
    """All three backbones for `opts`, loaded once per process per distinct model options."""
    return _load_backbones(replace(opts, lpips_size=EvalOptions.lpips_size))  # the input size is not a model


@functools.lru_cache(maxsize=2)
def _load_backbones(opts: EvalOptions) -> Backbones:
    return Backbones(dino=load_dino(opts), clip=load_clip(opts), lpips=load_lpips_scorer(opts))


def missing_backbones(opts: EvalOptions) -> list[str]:
    """Why each pretrained backbone of `opts` could not be loaded, found without loading any (empty: all there).

    A local path must exist; a hub id must be in the local cache unless the hub can be reached (then it is
    downloaded when scoring starts). Random backbones need nothing.
    """
    if not opts.pretrained:
        return []
    problems = []
    dino = Path(opts.dino).expanduser()
    if not dino.exists():
        cached = cached_hub_file(opts.dino, ["config.json"]) and cached_hub_file(
            opts.dino, ["model.safetensors", "pytorch_model.bin"]
        )
        reason = None if cached else offline_reason()
        if reason is not None:
            tried = [f"local folder {dino}", f"Hugging Face cache for {opts.dino!r}"]
            problems.append(str(unavailable("DINO", tried, "eval.dino", reason)))
    clip = Path(opts.clip_pretrained).expanduser()
    if not clip.exists():
        try:
            _open_clip_source(opts.clip_arch, opts.clip_pretrained)
        except (RuntimeError, ValueError) as err:  # BackboneUnavailable, or an unknown tag
            problems.append(str(err))
    try:
        checkpoint_path(opts.lpips_net)
    except (FileNotFoundError, ValueError) as err:
        problems.append(str(err))
    return problems
