"""One run: compose → load base model → train → save adapter → sample → evaluate → metrics.json.

Stages are recorded in `metrics.json` (`stage`: trained → sampled → scored), so `resume=true` picks up after
the last finished stage (or from the last training checkpoint), and a finished run is never redone unless
`overwrite=true`. Every failure after the run folder exists is recorded as `status: "failed"` with the error.
Failures before that (bad config, missing weights, bad data) leave nothing behind.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from para.core.checkpoint import remove_checkpoints
from para.core.conditioning import SubjectLatents, photo_time_ids
from para.core.data import instance_prompt, load_subject_images, load_subject_photos
from para.core.io import atomic_write_json, atomic_write_text, read_json
from para.core.memory import current_mb, peak_mb, reset_peak
from para.core.method import Method
from para.core.models import check_model_available, load_pipeline, model_id, resolve_device
from para.core.prompts import evaluation_prompts
from para.core.provenance import provenance
from para.core.residency import Offload
from para.core.sampling import PromptSpec, generate
from para.core.trainer import Trainer, TrainResult
from para.run.config import validate
from para.run.model_card import write_model_card
from para.run.plan import require_fit
from para.run.registry import METHODS
from para.tracking.loggers import artifact_name, build_logger, image_grid, log_scores, open_image, with_rate

log = logging.getLogger(__name__)

OOM_HINT = (
    "out of GPU memory. Options: train.gradient_checkpointing=true, train.mixed_precision=bf16, "
    "model.weights_dtype=bf16, a smaller model.resolution (e.g. 512), train.optimizer=adamw8bit or adafactor, "
    "sample.batch_size=1"
)

# submitit ends a job that SLURM preempts or times out with sys.exit(-1) (after requeueing it); so does Ctrl-C.
INTERRUPTED = (
    "interrupted ({err}): preempted, timed out or stopped; a requeued job, or a rerun with resume=true, "
    "continues from the last checkpoint"
)


def run_dir_of(cfg: DictConfig) -> Path:
    """Hydra's output folder when launched through Hydra (honours hydra.run.dir), else cfg.run_dir."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.run_dir)


def finished_metrics(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = read_json(path)
    except ValueError:
        return None
    return metrics if metrics.get("status") == "finished" else None


def _prepare_folder(run_dir: Path, cfg: DictConfig) -> dict | None:
    """Previous metrics to resume from; clears an unfinished or overwritten run folder when not resuming."""
    previous = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else None
    if cfg.resume and previous is not None:
        return previous
    if run_dir.exists() and any(run_dir.iterdir()):
        log.info("clearing previous contents of %s", run_dir)
        for child in run_dir.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    return None


def sample_prompts(cfg: DictConfig) -> list[PromptSpec]:
    pairs = evaluation_prompts(cfg.subject.kind, cfg.data.token, cfg.subject.class_word)
    pairs = pairs[: cfg.sample.num_prompts] if cfg.sample.num_prompts else pairs
    return [PromptSpec(i, p, clean) for i, (p, clean) in enumerate(pairs)]


class Run:
    """State of one run while it executes; `execute()` is the whole pipeline."""

    def __init__(self, cfg: DictConfig):
        validate(cfg)
        self.cfg = cfg
        self.run_dir = run_dir_of(cfg)
        self.resolution = cfg.model.resolution
        self.metrics: dict[str, Any] = {}

    def write_metrics(self, **updates: Any) -> None:
        self.metrics.update(updates)
        atomic_write_json(self.run_dir / "metrics.json", self.metrics)

    def execute(self) -> dict:
        cfg = self.cfg
        done = finished_metrics(self.run_dir)
        if done is not None and not cfg.overwrite:
            log.warning("%s holds a finished run; kept as is (overwrite=true to redo it)", self.run_dir)
            if cfg.eval.enabled and "scores" not in done and (self.run_dir / "samples" / "prompts.json").is_file():
                log.info("scoring its samples, which were never scored")  # e.g. trained with eval.enabled=false
                from eval.score import score_run

                self.metrics = done
                self.write_metrics(scores=score_run(self.run_dir, cfg.eval))
                return self.metrics
            return done
        device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        # Everything that can fail on bad input happens before the run folder is touched. Missing weights and the
        # resource plan first: a run that cannot fit the card or the disk is refused before its model loads.
        check_model_available(cfg.model)
        plan = require_fit(cfg, self.run_dir)
        pipe = load_pipeline(cfg.model, device)
        photos = load_subject_photos(
            cfg.data.root, cfg.subject.name, self.resolution, cfg.data.min_image_side, cfg.data.images
        )
        previous = _prepare_folder(self.run_dir, cfg)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config_dict = OmegaConf.to_container(cfg, resolve=True)
        atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        self.metrics = previous or {}
        for stale in ("error", "failed_at", "interrupted_at"):  # what ended the previous attempt, now resumed
            self.metrics.pop(stale, None)
        self.write_metrics(
            status="running",
            stage=self.metrics.get("stage", "started"),
            run_dir=str(self.run_dir),
            method=cfg.method.name,
            subject=cfg.subject.name,
            model=cfg.model.name,
            steps=cfg.steps,
            seed=cfg.seed,
            run_info=config_dict,
            plan=plan,  # the plan's counted estimate, next to train_info's measured peak
            meta_info={
                **provenance(device),
                "model_id": model_id(cfg.model),
                "model_kind": cfg.model.kind,
                "base_weights_pretrained": cfg.model.kind == "pretrained",
            },
        )
        exit_code, logger = 1, None
        try:  # a logger that cannot start (W&B) also marks the run failed
            logger = build_logger(cfg, self.run_dir, config_dict, previous)
            self.write_metrics(**logger.info())
            self._pipeline(pipe, photos, logger)
            exit_code = 0
        except BaseException as err:
            if not isinstance(err, Exception):  # SystemExit, KeyboardInterrupt: stopped from outside, not broken
                self.write_metrics(
                    status="interrupted", error=INTERRUPTED.format(err=repr(err)), interrupted_at=time.time()
                )
                raise
            message = OOM_HINT if isinstance(err, torch.cuda.OutOfMemoryError) else f"{type(err).__name__}: {err}"
            self.write_metrics(status="failed", error=message, failed_at=time.time())
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise RuntimeError(f"{self.run_dir}: {OOM_HINT}") from err
            raise
        finally:
            if logger is not None:
                logger.finish(exit_code)  # the W&B run ends as failed (exit code 1) on any error
        return self.metrics

    def _pipeline(self, pipe, photos, logger) -> None:
        cfg = self.cfg
        method: Method = METHODS[cfg.method.name](cfg.method, model_id(cfg.model))
        prior = self._prior(pipe) if cfg.train.prior_loss_weight > 0 else None
        params = method.attach(pipe.unet)
        text_params = method.attach_text_encoders(pipe)
        params += text_params
        n_params = sum(p.numel() for p in params)
        self.write_metrics(trainable_params=n_params)
        unet_total = sum(p.numel() for p in pipe.unet.parameters())
        logger.summary({"params/trainable": n_params, "params/unet_total": unet_total})
        adapter_path = self.run_dir / "adapter.safetensors"
        if self.metrics.get("stage") in ("trained", "sampled", "scored") and adapter_path.is_file():
            method.load_file(pipe.unet, adapter_path)
            log.info("resume: training already finished, adapter loaded from %s", adapter_path)
        else:
            result = self._train(pipe, method, params, photos, prior, logger, train_text=bool(text_params))
            method.save(pipe.unet, adapter_path)
            logger.log_artifact(adapter_path, artifact_name(self.run_dir), "adapter", method.metadata())
            self.write_metrics(stage="trained", train_info=_train_info(result, method))
            if not cfg.train.keep_checkpoints_after_run:  # the adapter is saved: they can only resume training
                remove_checkpoints(self.run_dir / "checkpoints")
        method.end_training(pipe.unet)
        if cfg.sample.enabled:
            self._sample(pipe, method)
        if cfg.sample.enabled and cfg.eval.enabled:
            from eval.score import score_run

            scores = score_run(self.run_dir, cfg.eval)
            self.write_metrics(stage="scored", scores=scores)
            log_scores(logger, self.run_dir, scores)
        write_model_card(self.run_dir, cfg, self.metrics)  # README.md: what was trained, scores, how to load it
        self.write_metrics(status="finished", finished_at=time.time())

    def _train(self, pipe, method: Method, params, photos, prior, logger, train_text: bool) -> TrainResult:
        cfg = self.cfg
        pixels, sizes = photos
        time_ids = photo_time_ids(sizes, self.resolution) if cfg.data.original_size == "photo" else None
        instance = SubjectLatents(pipe, pixels, cfg.data.flip_p, cache=cfg.train.cache_latents, time_ids=time_ids)
        prompt = instance_prompt(cfg.data.prompt_template, cfg.data.token, cfg.subject.class_word)
        trainer = Trainer(
            pipe, method, params, cfg, checkpoint_dir=self.run_dir / "checkpoints", train_text=train_text
        )
        callbacks = [lambda step, m: logger.log(with_rate(m), step) if step % cfg.train.log_every == 0 else None]
        if cfg.logger.sample_every:
            callbacks.append(self._validation_callback(pipe, method, logger, trainer.offload))
        result = trainer.train(instance, prompt, self.resolution, prior=prior, callbacks=callbacks)
        trainer.release()  # optimizer state and gradients leave before sampling
        return result

    def _validation_callback(self, pipe, method: Method, logger, offload: Offload):
        """Every `logger.sample_every` steps: the same prompts and seeds, so frames are comparable, in the form
        and with the sampler of the final samples (a grid at the last step shows the run's own samples)."""
        cfg = self.cfg
        prompts = sample_prompts(cfg)[: cfg.logger.sample_prompts]

        def callback(step: int, _metrics: dict) -> None:
            if step % cfg.logger.sample_every:
                return
            folder = self.run_dir / "validation" / f"step{step:06d}"
            pipe.unet.eval()
            with offload.restored():
                self._generate(pipe, method, prompts, folder, 1, min(cfg.sample.steps, 25), 1, progress=False)
            pipe.unet.train()
            grid = image_grid([open_image(folder / f"p{p.index:02d}_i00.png") for p in prompts])
            logger.log_images("validation/samples", [grid], [" | ".join(p.prompt for p in prompts)], step)

        return callback

    def _generate(
        self, pipe, method: Method, prompts, folder: Path, per_prompt: int, steps: int, batch: int, progress=True
    ) -> bool:
        """Images in the method's sampling form (LoRA at its scale, PaRa merged, DreamBooth in the weights
        dtype), with the sampler, guidance and resolution of `sample.*`; True if the weights were merged."""
        cfg, sc = self.cfg, self.cfg.sample
        merged = method.prepare_for_sampling(pipe.unet, merge=sc.merge)
        try:
            generate(
                pipe,
                prompts,
                folder,
                seed=cfg.seed,
                images_per_prompt=per_prompt,
                steps=steps,
                guidance=sc.guidance,
                resolution=sc.resolution or self.resolution,
                batch_size=batch,
                scheduler=sc.scheduler,
                progress=progress,
            )
        finally:
            method.finish_sampling(pipe.unet)
        return merged

    def _sample(self, pipe, method: Method) -> None:
        sc = self.cfg.sample
        t0 = time.perf_counter()
        start = current_mb(pipe.unet.device)  # on a CPU: what training left resident (heap kept by the allocator)
        reset_peak(pipe.unet.device)
        folder = self.run_dir / "samples"
        merged = self._generate(
            pipe, method, sample_prompts(self.cfg), folder, sc.images_per_prompt, sc.steps, sc.batch_size
        )
        info = {"seconds": time.perf_counter() - t0, "merged": merged, "peak_memory_mb": peak_mb(pipe.unet.device)}
        self.write_metrics(stage="sampled", sample_info={**info, "start_memory_mb": start})

    def _prior(self, pipe) -> tuple[SubjectLatents, str]:
        """Class images from the base model (generated once per model and class, cached) for prior preservation."""
        cfg = self.cfg
        prompt = cfg.train.class_prompt_template.format(class_word=cfg.subject.class_word)
        folder = Path(cfg.train.class_images_dir) / cfg.model.name / cfg.subject.class_word.replace(" ", "_")
        spec = PromptSpec(0, prompt, prompt)
        generate(
            pipe,
            [spec],
            folder,
            seed=cfg.seed,
            images_per_prompt=cfg.train.num_class_images,
            steps=cfg.sample.steps,
            guidance=cfg.sample.guidance,
            resolution=self.resolution,
            batch_size=cfg.sample.batch_size,
            scheduler=cfg.sample.scheduler,
        )
        pixels = load_subject_images(folder.parent, folder.name, self.resolution)
        return SubjectLatents(pipe, pixels, cfg.data.flip_p, cache=True), prompt


def _train_info(result: TrainResult, method: Method) -> dict:
    steps = sorted(result.step_seconds[1:] or result.step_seconds)  # the first step pays warm-up costs
    return {
        "losses": result.losses,
        "wall_seconds": result.wall_seconds,
        "peak_memory_mb": result.peak_memory_mb,
        "resumed_from": result.resumed_from,
        "median_step_seconds": steps[len(steps) // 2] if steps else None,
        "method_summary": method.summary(),
    }


def execute(cfg: DictConfig) -> dict:
    return Run(cfg).execute()
