"""The counting side of the resource plan: one training step, one sampling forward, the VAE, on fake tensors.

The base model is built from its configs on the meta device in the run's weights dtype (`build_models`), the
method is attached through the registry exactly as a run attaches it, and the UNet's tensors become fake CPU
tensors (`para.core.fake_memory`). For a card, autocast follows CUDA's rules, not the CPU's
(`para.core.cuda_autocast`: GroupNorm, LayerNorm, the upsampling in fp32, each consumer of their output casting
its own bf16 copy); fake CUDA tensors would need a GPU for their backward. Then the trainer's own loss
(`Trainer._loss`: autocast, the SDXL conditioning, gradient checkpointing as the run enables it), a backward
pass, gradient clipping and a step of the run's optimizer run under `LiveBytes`, and so do the VAE's encode,
the method's sampling form (`end_training`, `prepare_for_sampling`: merged PaRa keeps W0 beside the merged
weights), one sampling forward (classifier-free guidance doubles the batch, no autocast: `generate` runs the
UNet in its weights dtype) and the VAE's decode. Nothing is guessed except what a CPU cannot run:
bitsandbytes' 8-bit AdamW, whose state is computed from its layout (below).

Counts are cached in memory and, per architecture and settings, as JSON files (`plan.cache_dir`), so the
check before every run costs seconds once per setting; SDXL's common settings ship with the package
(para.run.plan_shipped), so a fresh checkout counts none of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

from para.core.conditioning import Conditioning
from para.core.cuda_autocast import clear_cache, cuda_rules
from para.core.fake_memory import LiveBytes, make_fake, module_bytes, storage_bytes
from para.core.io import atomic_write_json
from para.core.sdxl_architecture import build_models, scheduler_config, vae_scale_factor
from para.core.trainer import Trainer, build_optimizer
from para.run import plan_shipped
from para.run.plan_shipped import library_versions
from para.run.registry import METHODS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENS = 77


OPTIMIZERS = ("adamw", "adamw8bit", "adafactor")


@dataclass(frozen=True)
class Setting:
    """What memory depends on, resolved for the target device (no `auto` left). The optimizer is not part of
    it: one backward pass gives the gradients every optimizer's state is counted from."""

    architecture: str  # sdxl (shipped configs) | random-tiny | random-small | a diffusers folder
    device: str  # cuda | cpu: whose autocast rules the count follows
    method: str
    method_cfg: str  # JSON of the method's config
    weights_dtype: str  # float32 | bfloat16 | float16
    autocast: str | None  # bfloat16 | float16 | None
    resolution: int
    batch_size: int
    gradient_checkpointing: bool
    prior: bool
    sample_resolution: int
    sample_batch_size: int
    sample_merge: bool  # sample.merge: a merging method samples with its merged weights (and keeps W0)

    def key(self, part: str) -> str:
        """Cache key of the `train` or `sample` counts: only the fields that part depends on, and the code."""
        return self._digest(part, _code_version())

    def shipped_key(self, part: str) -> str:
        """Key of the counts shipped with the package (para.run.plan_shipped): library versions, not the code."""
        return self._digest(part, library_versions())

    def _digest(self, part: str, version: str) -> str:
        skip = TRAIN_ONLY if part == "sample" else SAMPLE_ONLY
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        text = json.dumps(fields, sort_keys=True) + part + version
        return hashlib.sha1(text.encode()).hexdigest()[:16]


TRAIN_ONLY = ("batch_size", "gradient_checkpointing", "prior")
SAMPLE_ONLY = ("sample_resolution", "sample_batch_size", "sample_merge")


@dataclass
class TrainCounts:
    """Bytes (and parameters) of training one setting; peaks are above the resident weights."""

    resident: int  # every component's weights and buffers, the method attached (DreamBooth: fp32 UNet)
    components: dict[str, int]  # each component as loaded, before the method is attached
    trainable_params: int
    gradients: int
    activations: int  # alive at the end of the forward pass: what backward needs
    step_peak: int  # forward + backward, gradients included
    optimizer_state: dict[str, int]  # per optimizer (OPTIMIZERS)
    optimizer_peak: dict[str, int]  # the optimizer step: gradients, new state, temporaries
    adapter_file: int  # the saved adapter (`Method.to_saved`)
    checkpoint_trainable: int  # a checkpoint's method state (`Method.state_dict`); + optimizer state

    def train_peak(self, optimizer: str) -> int:
        """Steady-state step: the optimizer state exists through forward and backward."""
        return max(self.step_peak + self.optimizer_state[optimizer], self.optimizer_peak[optimizer])


@dataclass
class SampleCounts:
    encode_peak: int  # encoding one photo with the VAE (latents are cached before training)
    # the rest is above the weights after `end_training` (`resident_change` from the training weights: DreamBooth's
    # fp32 master cast down to the weights dtype, < 0)
    resident_change: int
    sampling_form: int  # what the sampling form adds to the weights (merged PaRa: the merged weights beside W0)
    sample_peak: int  # the sampling form (merging) + one sampling forward (2 × sample batch: guidance)
    decode_peak: int  # decoding the sample batch with the VAE, in the sampling form


@lru_cache(maxsize=1)
def _code_version() -> str:
    """Counts depend on the methods' and the trainer's code: a change there invalidates cached counts."""
    root = Path(__file__).resolve().parents[2]
    files = sorted([*root.glob("para/*.py"), *root.glob("baselines/*.py"), root / "para/core/trainer.py"])
    digest = hashlib.sha1(library_versions().encode())
    own = ("para/core/fake_memory.py", "para/core/cuda_autocast.py", "para/run/plan_eval.py")
    for path in [*files, Path(__file__), *(root / name for name in own)]:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _bytes_of(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def adamw8bit_state_bytes(params: list[nn.Parameter]) -> int:
    """bitsandbytes' AdamW8bit (blockwise): two uint8 moments + one fp32 absmax per 256 values for each tensor
    of ≥ 4096 values (`min_8bit_size`); smaller tensors keep two fp32 moments. It needs CUDA, so it is computed."""
    total = 0
    for p in params:
        n = p.numel()
        total += 2 * n + 2 * 4 * math.ceil(n / 256) if n >= 4096 else 2 * 4 * n
    return total


def _run_config(setting: Setting, cfg):
    """The run config as the trainer reads it, with the counted setting's choices."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.train.mixed_precision = {"bfloat16": "bf16", "float16": "fp16", None: "no"}[setting.autocast]
    cfg.train.gradient_checkpointing = setting.gradient_checkpointing
    cfg.train.optimizer = "adamw"  # the trainer's own optimizer is not stepped: `_optimizer_step` runs each
    cfg.train.compile = False
    return cfg


def _attached(setting: Setting, device: str) -> tuple[dict[str, nn.Module], object, list[nn.Parameter]]:
    """The base model with the method attached (it may add tensors or change dtypes)."""
    models = build_models(setting.architecture, DTYPES[setting.weights_dtype], device)
    method = METHODS[setting.method](json.loads(setting.method_cfg), "plan")
    params = method.attach(models["unet"])
    params += method.attach_text_encoders(types.SimpleNamespace(**models))
    return models, method, params


def _faked(models: dict[str, nn.Module], params: list[nn.Parameter]):
    """(fake mode, trainable parameters as fake tensors, a LiveBytes that ignores every weight); models with
    real weights (the check against real tensors) stay as they are."""
    mode, converted = nullcontext(), {id(p): p for p in params}
    if next(iter(models.values())).device.type == "meta":
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        for model in models.values():
            converted.update(make_fake(model, mode))
    live = LiveBytes(ignore=[t for m in models.values() for t in (*m.parameters(), *m.buffers())])
    return mode, [converted[id(p)] for p in params], live


def count_training(setting: Setting, cfg, device: str = "meta") -> TrainCounts:
    """Count training one setting (see the module docstring). `cfg` is the run config (train.*, method.lr);
    `device="cpu"` runs the same on real tensors (tests: the fake count must equal it).

    The UNet runs in training mode, as in a run. peft's LyCORIS layers (loha, lokr) decide their module dropout
    from a random number in training mode (`torch.rand(1) > p`), which shapes alone cannot answer; for them the
    forward is counted in eval mode, which computes the same thing when that dropout is 0 (the default)."""
    try:
        return _count_training(setting, cfg, device, train_mode=True)
    except DataDependentOutputException:
        return _count_training(setting, cfg, device, train_mode=False)


def _count_training(setting: Setting, cfg, device: str, train_mode: bool) -> TrainCounts:
    loaded = build_models(setting.architecture, DTYPES[setting.weights_dtype])
    components = {name: module_bytes(model) for name, model in loaded.items()}  # as loaded, before the method
    models, method, params = _attached(setting, device)
    state = method.state_dict(models["unet"])
    adapter_file, checkpoint_trainable = _bytes_of(method.to_saved(state)), _bytes_of(state)
    del state, loaded
    resident = sum(module_bytes(model) for model in models.values())
    mode, params, live = _faked(models, params)
    with _rules(setting), mode, live:
        step = _train_step(setting, _run_config(setting, cfg), models, method, params, live, train_mode)
    return TrainCounts(
        resident=resident,
        components=components,
        trainable_params=sum(p.numel() for p in params),
        adapter_file=adapter_file,
        checkpoint_trainable=checkpoint_trainable,
        **step,
    )


def count_sampling(setting: Setting, device: str = "meta") -> SampleCounts:
    """Count encoding a photo, the method's sampling form, one sampling forward and decoding the samples."""
    models, method, _ = _attached(setting, device)
    unet, vae = models["unet"], models["vae"]
    trained = sum(module_bytes(model) for model in models.values())
    method.end_training(unet)  # before faking: fake parameters cannot be cast (nn.Module.to swaps them)
    resident_change = sum(module_bytes(model) for model in models.values()) - trained
    mode, _, live = _faked(models, [])
    with _rules(setting), mode, live, torch.no_grad():
        encode = _vae_encode_peak(setting, vae, live)
        base = live.live
        live.restart_peak()
        method.prepare_for_sampling(unet.eval(), merge=setting.sample_merge)  # merging: W0 stays beside W
        form = live.live - base
        _sample_forward(setting, unet, vae_scale_factor(vae))
        sample = live.peak - base
        live.restart_peak()
        _vae_decode(setting, vae)
        decode = live.peak - base + _vae_dtype(vae)[1]
    return SampleCounts(encode, resident_change, form, sample, decode)


def _conditioning(unet: nn.Module, dtype: torch.dtype, batch: int = 1) -> Conditioning:
    """The text encoders' output, on the UNet's device (where `encode_prompt` leaves it)."""
    c, device = unet.config, unet.device
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    return Conditioning(
        torch.randn(batch, TOKENS, c.cross_attention_dim, dtype=dtype, device=device),
        torch.randn(batch, pooled, dtype=dtype, device=device),
        torch.randn(batch, 6, dtype=dtype, device=device),
    )


def _rules(setting: Setting):
    """CUDA's autocast rules for a card's count (`para.core.cuda_autocast`); the CPU's own for a CPU's."""
    return cuda_rules() if setting.device == "cuda" else nullcontext()


class CountingTrainer(Trainer):
    """The trainer, whose autocast region (in `_loss`) ends with CUDA's cast cache cleared, as CUDA's does."""

    def _loss(self, *args, **kwargs) -> torch.Tensor:
        try:
            return super()._loss(*args, **kwargs)
        finally:
            clear_cache()


def _train_step(setting: Setting, cfg, models, method, params, live: LiveBytes, train_mode: bool) -> dict[str, int]:
    unet = models["unet"]
    scheduler = types.SimpleNamespace(config=scheduler_config(setting.architecture))
    trainer = CountingTrainer(types.SimpleNamespace(unet=unet, scheduler=scheduler), method, params, cfg)
    unet.train(train_mode)
    side = setting.resolution // vae_scale_factor(models["vae"])
    shape = (setting.batch_size, unet.config.in_channels, side, side)
    cond = _conditioning(unet, DTYPES[setting.weights_dtype])  # the text encoders' output
    generator = torch.Generator().manual_seed(0)
    base = live.live
    live.restart_peak()
    loss = trainer._loss(torch.randn(shape, device=unet.device), cond, generator)
    if setting.prior:  # prior preservation: a second graph, alive until backward
        loss = loss + trainer._loss(torch.randn(shape, device=unet.device), cond, generator)
    activations = live.live - base
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    del loss
    for p in params:  # text encoders get no gradient from random conditioning; a run gives them one
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    step_peak = live.peak - base
    gradients = storage_bytes(p.grad for p in params)
    state, peak = {}, {}
    for name in OPTIMIZERS:
        state[name], peak[name] = _optimizer_step(name, params, cfg, live, base)
    return dict(
        gradients=gradients,
        optimizer_state=state,
        optimizer_peak=peak,
        activations=activations,
        step_peak=step_peak,
    )


def _optimizer_step(name: str, params: list[nn.Parameter], cfg, live: LiveBytes, base: int) -> tuple[int, int]:
    """(state bytes, peak above `base`) of one clipped step of optimizer `name` on the gradients in place."""
    if name == "adamw8bit":
        state = adamw8bit_state_bytes(params)
        return state, live.live - base + state
    live.restart_peak()
    optimizer = build_optimizer(params, name, cfg.method.lr, cfg.train.weight_decay)
    if cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
    optimizer.step()
    tensors = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    state = storage_bytes(tensors)
    optimizer.state.clear()  # the next optimizer starts from the gradients alone
    return state, live.peak - base


def _sample_forward(setting: Setting, unet: nn.Module, scale_factor: int) -> None:
    """One guided sampling step's UNet forward (unconditional + conditional), as `generate` runs it: no autocast."""
    batch = 2 * setting.sample_batch_size
    side = setting.sample_resolution // scale_factor
    cond = _conditioning(unet, unet.dtype, batch)
    latents = torch.randn(batch, unet.config.in_channels, side, side, dtype=unet.dtype, device=unet.device)
    added = {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
    timesteps = torch.zeros(batch, device=unet.device)
    unet(latents, timesteps, encoder_hidden_states=cond.prompt_embeds, added_cond_kwargs=added)


def _vae_dtype(vae: nn.Module) -> tuple[torch.dtype, int]:
    """(the dtype the VAE computes in, the bytes of an upcast copy of its weights): an fp16 VAE with `force_upcast`
    runs in fp32 (SDXL's VAE overflows in fp16), counted as the upcast copy plus fp32 activations."""
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    return (torch.float32, 2 * module_bytes(vae)) if upcast else (vae.dtype, 0)


def _vae_encode_peak(setting: Setting, vae: nn.Module, live: LiveBytes) -> int:
    """Encoding one photo, its upcast copy of the VAE included (see `_vae_dtype`)."""
    dtype, upcast = _vae_dtype(vae)
    res, device = setting.resolution, vae.device
    base = live.live
    live.restart_peak()
    vae.encode(torch.randn(1, 3, res, res, dtype=vae.dtype, device=device).to(dtype))
    return live.peak - base + upcast


def _vae_decode(setting: Setting, vae: nn.Module) -> None:
    dtype, _ = _vae_dtype(vae)
    side = setting.sample_resolution // vae_scale_factor(vae)
    latents = torch.randn(setting.sample_batch_size, vae.config.latent_channels, side, side, device=vae.device)
    vae.decode(latents.to(vae.dtype).to(dtype))


_MEMORY: dict[str, object] = {}


def forget() -> None:
    """Drop the counts this process holds (the next plan looks in `plan.cache_dir`, the shipped table, or counts)."""
    _MEMORY.clear()


def _cached(key: str, cls: type, cache_dir: str | None, compute, shipped_key: str | None = None):
    """`compute()` once per key: in this process, in `cache_dir/<key>.json` across processes, and not at all for
    the counts shipped with the package under `shipped_key` (para.run.plan_shipped)."""
    if key not in _MEMORY:
        shipped = plan_shipped.lookup(shipped_key, cls) if shipped_key else None
        _MEMORY[key] = _stored(key, cls, cache_dir) or shipped
    if _MEMORY[key] is None:
        _MEMORY[key] = compute()
        if cache_dir:
            atomic_write_json(Path(cache_dir) / f"{key}.json", dataclasses.asdict(_MEMORY[key]))
    if shipped_key:
        plan_shipped.record(shipped_key, _MEMORY[key])
    return _MEMORY[key]


def _stored(key: str, cls: type, cache_dir: str | None):
    path = Path(cache_dir) / f"{key}.json" if cache_dir else None
    if path and path.is_file():
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass  # an unreadable or outdated cache file is recounted and rewritten
    return None


def cached_counts(setting: Setting, cfg, cache_dir: str | None) -> tuple[TrainCounts, SampleCounts]:
    train = _cached(
        setting.key("train"),
        TrainCounts,
        cache_dir,
        lambda: count_training(setting, cfg),
        setting.shipped_key("train"),
    )
    sample = _cached(
        setting.key("sample"), SampleCounts, cache_dir, lambda: count_sampling(setting), setting.shipped_key("sample")
    )
    return train, sample
