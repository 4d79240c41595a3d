"""The one training loop every method runs through (SDXL noise-prediction loss, DESIGN.md).

It knows nothing about PaRa, LoRA or DreamBooth: it receives the trainable parameters from `Method.attach`
and saves `Method.state_dict`. All randomness of step s (photo, flip, latent sample, noise, timestep) comes
from a generator seeded with (seed, s), so a run resumed from a checkpoint draws exactly what an
uninterrupted run draws, without saving RNG state.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from para.core.checkpoint import checkpoint_interval, latest_checkpoint, save_checkpoint
from para.core.conditioning import Conditioning, SubjectLatents, encode_prompt
from para.core.interrupts import RunInterrupted, deferred
from para.core.memory import peak_mb, reset_peak
from para.core.method import Method
from para.core.residency import Offload

if TYPE_CHECKING:  # diffusers loads with the model: a run refused by its preflight never waits for it
    from diffusers import StableDiffusionXLPipeline

log = logging.getLogger(__name__)

StepCallback = Callable[[int, dict[str, float]], None]


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss, ...); the message says what to change."""


@dataclass
class TrainResult:
    losses: list[float]
    wall_seconds: float
    peak_memory_mb: float
    resumed_from: int | None
    step_seconds: list[float] = field(default_factory=list)
    checkpoint_every: int = 0  # the interval used (train.checkpoint_every, or its automatic value)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    if mixed_precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}[mixed_precision]


GPU_EXTRA = "pip install 'para-repro[gpu]'"  # pyproject's optional `gpu` extra: bitsandbytes


def missing_optimizer_package(name: str) -> str | None:
    """Why the optimizer `name` cannot be built here (a package it needs is not installed, and how to get it)."""
    if name == "adamw8bit" and importlib.util.find_spec("bitsandbytes") is None:
        return f"train.optimizer=adamw8bit needs bitsandbytes, which is not installed: {GPU_EXTRA}"
    return None


def training_noise_schedule(scheduler_config: Any) -> Any:
    """The schedule training adds noise with: the model's own (its sampler's betas and prediction type), as DDPM."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config)


def build_optimizer(params: list[torch.nn.Parameter], name: str, lr: float, weight_decay: float):
    if name == "adamw":
        fused = all(p.is_cuda for p in params)  # fused AdamW: one kernel for all tensors on CUDA
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if name == "adamw8bit":
        missing = missing_optimizer_package(name)
        if missing:
            raise TrainingError(missing)
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, weight_decay=weight_decay, relative_step=False, scale_parameter=False)
    raise ValueError(f"unknown optimizer {name!r}; expected adamw, adamw8bit or adafactor")


class Trainer:
    """Trains `method` on one subject. `cfg` is the full run config (train.*, method.lr, steps, seed)."""

    def __init__(
        self,
        pipe: StableDiffusionXLPipeline,
        method: Method,
        params: list[torch.nn.Parameter],
        cfg: Any,
        checkpoint_dir: Path | None = None,
        train_text: bool = False,
        reset_peak_memory: bool = True,
    ):
        self.pipe, self.method, self.params, self.cfg = pipe, method, params, cfg
        self.train_text = train_text  # text encoders train: the prompt is re-encoded (with grad) every step
        # `train()` starts a new peak-memory count (the run's training peak: CUDA tensors, or the CPU resident set
        # with what loading left behind); a caller measuring a wider region itself (para.bench.compare) turns it off.
        self.reset_peak_memory = reset_peak_memory
        self.unet = pipe.unet
        self.device = self.unet.device
        self.checkpoint_dir = checkpoint_dir
        self.noise_scheduler = training_noise_schedule(pipe.scheduler.config)
        if self.noise_scheduler.config.prediction_type not in ("epsilon", "v_prediction"):
            raise TrainingError(f"unsupported prediction type {self.noise_scheduler.config.prediction_type}")
        tc = cfg.train
        self.optimizer = build_optimizer(params, tc.optimizer, cfg.method.lr, tc.weight_decay)
        warmup = tc.warmup_steps
        self.lr_schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
        )
        # null: by the size of what a checkpoint holds (small adapters often, a full UNet rarely)
        every = tc.checkpoint_every
        self.checkpoint_every = checkpoint_interval(params, tc.optimizer) if every is None else every
        self.last_grad_norm = float("nan")
        self.amp_dtype = autocast_dtype(tc.mixed_precision, self.device)
        # fp16 autocast needs loss scaling on every device (torch.amp's default device is CUDA: on a CPU it would
        # silently disable itself and fp16 runs here would not rehearse the GPU path).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        # With the photos and prompt cached and the text encoders frozen, a step needs the UNet only.
        # (A pipe holding only a UNet, as the resource plan's counting gives, has nothing to park.)
        names = ("vae", "text_encoder", "text_encoder_2")
        frozen = {name: getattr(pipe, name) for name in names if getattr(pipe, name, None) is not None}
        self.offload = Offload(frozen, self.device)
        self.offload_frozen = tc.cache_latents and not train_text
        if tc.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        if tc.compile:
            # In place (nn.Module.compile): parameter names, state dicts and the method's layers stay as they are;
            # the first step compiles, and sampling compiles once more (no grad, merged layers swapped in).
            self.unet.compile(backend=tc.compile_backend)

    def _loss(
        self,
        latents: torch.Tensor,
        cond: Conditioning,
        generator: torch.Generator,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`time_ids` (batch, 6): the photos' own micro-conditioning; default: the prompt's (the resolution)."""
        batch = latents.shape[0]
        time_ids = cond.time_ids.expand(batch, -1) if time_ids is None else time_ids
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (batch,), generator=generator).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        # The UNet's inputs in the UNet's dtype: DreamBooth trains fp32 master weights while the frozen text encoders
        # of a bf16 base model hand over bf16 embeddings (without autocast the first matmul would refuse the mix).
        dtype = self.unet.dtype
        ctx = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with ctx:
            pred = self.unet(
                noisy.to(dtype),
                timesteps,
                encoder_hidden_states=cond.prompt_embeds.to(dtype).expand(batch, -1, -1),
                added_cond_kwargs={
                    "text_embeds": cond.pooled.to(dtype).expand(batch, -1),
                    "time_ids": time_ids.to(dtype),
                },
            ).sample
        return F.mse_loss(pred.float(), target.float())

    def train(
        self,
        instance: SubjectLatents,
        prompt: str,
        resolution: int,
        prior: tuple[SubjectLatents, str] | None = None,
        callbacks: list[StepCallback] = (),
    ) -> TrainResult:
        cfg = self.cfg
        cond = encode_prompt(self.pipe, prompt, resolution)
        prior_cond = encode_prompt(self.pipe, prior[1], resolution) if prior else None
        start, losses, resumed_from = self._resume() if cfg.resume else (0, [], None)
        self.unet.train()
        if self.offload_frozen:
            self.offload.park()
        if self.reset_peak_memory:
            reset_peak(self.device)
        t0 = time.perf_counter()
        step_seconds = []
        bar = tqdm(
            range(start, cfg.steps),
            initial=start,
            total=cfg.steps,
            desc=f"train {self.method.name}",
            dynamic_ncols=True,
            disable=None,
        )
        done, text = start, (prompt, resolution, cond)
        try:
            for step in bar:
                with deferred():  # SIGTERM / Ctrl-C mid-step: the step ends first, then a checkpoint is saved
                    step_seconds.append(self._step(step, instance, text, prior, prior_cond, losses))
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                    metrics = {
                        "train/loss": losses[-1],
                        "train/lr": self.lr_schedule.get_last_lr()[0],
                        "train/grad_norm": self.last_grad_norm,
                        "train/step_seconds": step_seconds[-1],
                    }
                    for callback in callbacks:
                        callback(step + 1, metrics)
                    done = step + 1
                    every = self.checkpoint_every
                    if self.checkpoint_dir and every and done % every == 0 and done < cfg.steps:
                        self.save_checkpoint(done, losses)
        except RunInterrupted as stop:
            saved = self.checkpoint_dir and (self.checkpoint_dir / f"step{done:06d}").is_dir()
            if stop.at_boundary and self.checkpoint_dir and done > start and not saved:
                log.warning("interrupted after step %d: saving a checkpoint to continue from", done)
                self.save_checkpoint(done, losses)
            raise
        self.unet.eval()
        if self.offload.parked:
            self.offload.restore()
        wall = time.perf_counter() - t0
        return TrainResult(
            losses, wall, peak_mb(self.device) or 0.0, resumed_from, step_seconds, self.checkpoint_every
        )

    def _draw(self, latents: SubjectLatents, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        if hasattr(latents, "draw"):
            return latents.draw(generator, self.cfg.train.batch_size)
        return latents.sample(generator, self.cfg.train.batch_size), None  # latents without photo sizes

    def release(self) -> None:
        """Free what only training needs once it is over: the optimizer state (AdamW: twice the trainable
        weights, 20 GB for DreamBooth on SDXL) and any gradient. The trainer cannot train on afterwards."""
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.state.clear()

    def _step(self, step: int, instance, text, prior, prior_cond, losses: list[float]) -> float:
        """One optimizer step; appends its loss to `losses`, returns its wall time. `text`: (prompt, resolution,
        its cached conditioning)."""
        cfg, tc = self.cfg, self.cfg.train
        prompt, resolution, cond = text
        t_step = time.perf_counter()
        generator = step_generator(cfg.seed, step)
        if self.train_text or not tc.cache_latents:  # uncached: also measures what caching saves
            cond = encode_prompt(self.pipe, prompt, resolution, grad=self.train_text)
        latents, time_ids = self._draw(instance, generator)
        loss = self._loss(latents, cond, generator, time_ids)
        if prior:
            latents, time_ids = self._draw(prior[0], generator)
            loss = loss + tc.prior_loss_weight * self._loss(latents, prior_cond, generator, time_ids)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {step}; lower method.lr (now {cfg.method.lr}), "
                "use train.mixed_precision=bf16 instead of fp16, or keep train.grad_clip on"
            )
        self.scaler.scale(loss).backward()
        self.last_grad_norm = self._clip()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        # Gradients are dead once applied: freed now, not at the next step, so validation grids, checkpoints and
        # the sampling after the last step never hold them (DreamBooth on SDXL: 10 GB).
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_schedule.step()
        losses.append(loss.item())
        return time.perf_counter() - t_step

    def _clip(self) -> float:
        self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip else math.inf
        return float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))

    def save_checkpoint(self, step: int, losses: list[float]) -> Path:
        return save_checkpoint(
            self.checkpoint_dir,
            step,
            self.method.state_dict(self.unet),
            self.optimizer.state_dict(),
            {"losses": losses, "method": self.method.name, "steps": self.cfg.steps},
            self.cfg.train.keep_checkpoints,
        )

    def _resume(self) -> tuple[int, list[float], int | None]:
        found = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
        if found is None:
            had_some = self.checkpoint_dir is not None and any(self.checkpoint_dir.glob("step*"))
            if had_some:  # each unreadable one was named by latest_checkpoint
                log.warning("no readable checkpoint in %s: training from step 0", self.checkpoint_dir)
            else:
                log.info("training %s for %d steps, from step 0", self.method.name, self.cfg.steps)
            return 0, [], None
        path, (trainable, optimizer, extra) = found
        check_resumable(path, extra, self.method.name, self.cfg.steps)
        self.method.load_state_dict(self.unet, trainable)
        self.optimizer.load_state_dict(optimizer)
        step = int(extra["step"])
        with warnings.catch_warnings():
            # the LR schedule is a pure function of the step count: fast-forwarding it before the first optimizer
            # step of this process skips nothing, so torch's warning about that order would only be noise
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            for _ in range(step):
                self.lr_schedule.step()
        log.info("resumed from %s (step %d)", path, step)
        return step, list(extra["losses"]), step


def check_resumable(path: Path, extra: dict[str, Any], method: str, steps: int) -> None:
    """Refuse a checkpoint of another method, or one already past `steps`, naming both sides."""
    saved_method = extra.get("method", method)  # checkpoints written before the method was recorded
    if saved_method != method:
        raise TrainingError(f"checkpoint {path} is of method {saved_method!r}, but this run trains {method!r}")
    if int(extra["step"]) > steps:
        raise TrainingError(
            f"checkpoint {path} is at step {extra['step']}, past this run's steps={steps}: continuing would record "
            f"a run of {extra['step']} steps as one of {steps}"
        )
