"""Evaluation backbones: DINO ViT-S/16, CLIP ViT-B/32 and LPIPS, with real or seeded random weights.

DreamBench (PAPER.md §6) scores subject fidelity with DINO ViT-S/16 CLS embeddings and CLIP ViT-B/32 image
embeddings, and text alignment with CLIP image-text cosine. `backbones="random"` builds the same
architectures with deterministic random weights and never touches the network: for tests and offline smoke
runs only, and every score says so (`pretrained` on each backbone). LPIPS uses real weights in both modes
when they are installed (see `eval.lpips_weights`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from eval.hub import cached_hub_file, offline_reason, unavailable
from eval.lpips_weights import GET_WEIGHTS, load_lpips
from eval.options import EvalOptions

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Seeds of the random-weight backbones: fixed so cached real-photo embeddings stay valid across processes.
DINO_SEED, CLIP_SEED = 0, 1
# Tuple outputs (return_dict=False) keep ModelOutput field order: (last_hidden_state, pooler_output, ...).
_TUPLE_INDEX = {"last_hidden_state": 0, "pooler_output": 1}


def as_embedding(output: Any, field: str = "pooler_output") -> Tensor:
    """The tensor a model call means, whatever the library version returns.

    open_clip's `encode_image` and transformers<5's `get_image_features` return a tensor; transformers 5
    returns a `BaseModelOutputWithPooling` whose `pooler_output` holds the projected embedding; with
    `return_dict=False` it is a tuple. This is the one place that absorbs those differences.
    """
    if isinstance(output, Tensor):
        return output
    value = getattr(output, field, None)
    if value is None and isinstance(output, Mapping):
        value = output.get(field)
    if value is None and isinstance(output, tuple) and len(output) > _TUPLE_INDEX.get(field, 0):
        value = output[_TUPLE_INDEX.get(field, 0)]
    if not isinstance(value, Tensor):
        raise TypeError(f"cannot read an embedding ({field!r}) from a {type(output).__name__}")
    return value


def resolve_device(device: str) -> torch.device:
    """`auto` -> cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic weight initialisation without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


@torch.inference_mode()
def _embed_batched(items: Sequence[Any], batch_size: int, encode: Callable[[Sequence[Any]], Tensor]) -> Tensor:
    """(N, D) float32 CPU embeddings, computed `batch_size` items at a time."""
    if not items:
        raise ValueError("nothing to embed: empty list")
    chunks = [encode(items[i : i + batch_size]).float().cpu() for i in range(0, len(items), batch_size)]
    return torch.cat(chunks)


@dataclass
class DinoEmbedder:
    """DINO ViT-S/16: CLS token of the last hidden state (DreamBooth paper's DINO metric)."""

    model: nn.Module
    name: str
    pretrained: bool
    device: torch.device
    batch_size: int = 16

    @property
    def id(self) -> str:
        return f"dino:{self.name}"

    def __call__(self, images: Sequence[Image.Image]) -> Tensor:
        """(N, 384) embeddings, not normalised."""
        from torchvision import transforms as T

        # DINO's evaluation transform: resize the short side to 256 (bicubic), centre-crop 224, ImageNet norm.
        preprocess = T.Compose([
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

        def encode(batch: Sequence[Image.Image]) -> Tensor:
            pixels = torch.stack([preprocess(_rgb(im)) for im in batch]).to(self.device)  # (B, 3, 224, 224)
            return as_embedding(self.model(pixel_values=pixels), "last_hidden_state")[:, 0]  # CLS, (B, 384)

        return _embed_batched(images, self.batch_size, encode)


@dataclass
class ClipEmbedder:
    """CLIP image and text embeddings behind one interface (open_clip or a transformers CLIP folder)."""

    encode_image: Callable[[Tensor], Any]
    encode_text: Callable[..., Any]
    preprocess: Callable[[Image.Image], Tensor]
    tokenize: Callable[[list[str]], dict[str, Tensor]]
    name: str
    pretrained: bool
    device: torch.device
    batch_size: int = 16

    @property
    def id(self) -> str:
        return f"clip:{self.name}"

    def embed_images(self, images: Sequence[Image.Image]) -> Tensor:
        """(N, D) image embeddings, not normalised."""

        def encode(batch: Sequence[Image.Image]) -> Tensor:
            pixels = torch.stack([self.preprocess(_rgb(im)) for im in batch]).to(self.device)
            return as_embedding(self.encode_image(pixels))

        return _embed_batched(images, self.batch_size, encode)

    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """(N, D) text embeddings, not normalised."""

        def encode(batch: Sequence[str]) -> Tensor:
            tokens = {k: v.to(self.device) for k, v in self.tokenize(list(batch)).items()}
            return as_embedding(self.encode_text(**tokens))

        return _embed_batched(texts, self.batch_size, encode)


@dataclass
class LpipsScorer:
    """An `lpips.LPIPS` model plus where its weights came from."""

    model: nn.Module
    net: str
    pretrained: bool
    device: torch.device

    @property
    def id(self) -> str:
        return f"lpips:{self.net}"


@dataclass
class Backbones:
    dino: DinoEmbedder
    clip: ClipEmbedder
    lpips: LpipsScorer

    @property
    def pretrained(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name).pretrained for f in fields(self)}


def dino_vits16_config() -> Any:
    """`ViTConfig` of facebook/dino-vits16 (ViT-S/16: width 384, 12 layers, 6 heads, 224 px)."""
    from transformers import ViTConfig

    return ViTConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
        patch_size=16, image_size=224, qkv_bias=True, layer_norm_eps=1e-6,
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

        with _seeded(DINO_SEED):
            model = ViTModel(dino_vits16_config(), add_pooling_layer=False)
    device = resolve_device(opts.device)
    model.eval().requires_grad_(False).to(device)
    return DinoEmbedder(model, opts.dino, opts.pretrained, device, opts.batch_size)


def _quick_gelu(arch: str, tag: str) -> bool:
    """OpenAI CLIP weights were trained with QuickGELU; open_clip's plain `ViT-B-32` config uses GELU.

    Follow the tag's setting; for a checkpoint file and for random weights follow the `openai` tag, the
    weights this harness specifies.
    """
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or open_clip.get_pretrained_cfg(arch, "openai") or {}
    return bool(cfg.get("quick_gelu", False))


def _open_clip_source(arch: str, source: str) -> tuple[str, str | None, dict[str, Any]]:
    """(model name, pretrained file or None, preprocess overrides) for open_clip, resolved without downloads."""
    import open_clip
    from open_clip.transform import PreprocessCfg

    path = Path(source).expanduser()
    if path.is_dir():
        return f"local-dir:{path}", None, {}
    if path.is_file():
        return arch, str(path), {}
    cfg = open_clip.get_pretrained_cfg(arch, source)
    if not cfg:
        raise ValueError(
            f"eval.clip_pretrained={source!r} is neither a file, a folder, nor an open_clip tag for {arch}; "
            f"tags: {open_clip.list_pretrained_tags_by_model(arch)}"
        )
    # The tag's own normalisation and resize mode, which open_clip only applies when given the tag itself.
    allowed = {f.name for f in fields(PreprocessCfg)}
    preprocess = {k: v for k, v in cfg.items() if k in allowed}
    tried = []
    if cfg.get("hf_hub"):
        repo = cfg["hf_hub"].strip("/")
        tried.append(f"Hugging Face cache of {repo}")
        cached = cached_hub_file(repo, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
        if cached:
            return arch, cached, preprocess
    if cfg.get("url"):
        url_cache = Path("~/.cache/clip").expanduser() / Path(cfg["url"]).name  # open_clip's URL download cache
        tried.append(str(url_cache))
        if url_cache.is_file():
            return arch, str(url_cache), preprocess
    reason = offline_reason()
    if reason is not None:
        raise unavailable(f"CLIP {arch}/{source}", tried, "eval.clip_pretrained", reason)
    return arch, source, {}  # the hub answers: let open_clip download the tag


def _load_hf_clip(path: Path, device: torch.device) -> tuple[Callable, Callable, Callable, Callable]:
    """A transformers CLIP folder (e.g. a snapshot of openai/clip-vit-base-patch32), local files only."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False).to(device)
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

    quick_gelu = _quick_gelu(opts.clip_arch, opts.clip_pretrained)
    if opts.pretrained:
        model_name, pretrained, preprocess_cfg = _open_clip_source(opts.clip_arch, opts.clip_pretrained)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, force_quick_gelu=quick_gelu,
                force_preprocess_cfg=preprocess_cfg or None, require_pretrained=True,
            )
        except (OSError, RuntimeError, ValueError) as err:
            raise unavailable("CLIP", [f"open_clip {model_name} with {pretrained}"], "eval.clip_pretrained",
                              str(err)) from err
    else:
        with _seeded(CLIP_SEED), warnings.catch_warnings(), _quiet("root"):
            warnings.simplefilter("ignore")
            model, _, preprocess = open_clip.create_model_and_transforms(
                opts.clip_arch, pretrained=None, force_quick_gelu=quick_gelu
            )
    model.eval().requires_grad_(False).to(device)
    tokenizer = open_clip.get_tokenizer(opts.clip_arch)
    return ClipEmbedder(
        encode_image=model.encode_image,
        encode_text=lambda text: model.encode_text(text),
        preprocess=preprocess,
        tokenize=lambda texts: {"text": tokenizer(texts)},
        name=name, pretrained=opts.pretrained, device=device, batch_size=opts.batch_size,
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
        with _seeded(DINO_SEED), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, pretrained = lpips.LPIPS(net=opts.lpips_net, pnet_rand=True, verbose=False), False
        model.eval().requires_grad_(False)
    return LpipsScorer(model.to(device), opts.lpips_net, pretrained, device)


@functools.lru_cache(maxsize=2)
def load_backbones(opts: EvalOptions) -> Backbones:
    """All three backbones for `opts`, loaded once per process per distinct options."""
    return Backbones(dino=load_dino(opts), clip=load_clip(opts), lpips=load_lpips_scorer(opts))
