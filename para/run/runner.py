"""One run: check inputs → hold the run folder → load base model → train → save adapter → sample → evaluate.

Every input is checked before the run folder is created (para.run.preflight); the run then holds its folder's
lock (para.core.lock) and decides, from what the folder holds, whether to start, continue, score or keep it
(para.run.folder). Stages are recorded in `metrics.json` (`stage`: trained → sampled → scored), so a re-run
picks up after the last finished stage (or from the last training checkpoint), and a finished run is never
redone unless `overwrite=true`. Every failure after the run began is recorded as `status: "failed"` with the
error; SIGTERM and Ctrl-C as `status: "interrupted"` (a checkpoint is saved when training).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from para.core.checkpoint import remove_checkpoints
from para.core.conditioning import SubjectLatents, photo_time_ids
from para.core.data import instance_prompt, load_images, load_subject_photos
from para.core.interrupts import RunInterrupted, stop_on_signals
from para.core.io import DiskFull, atomic_write_json, atomic_write_text, disk_full_message, is_disk_full
from para.core.lock import FolderLock
from para.core.memory import current_mb, peak_mb, reset_peak
from para.core.method import Method
from para.core.models import load_pipeline, model_id, resolve_device, watermarked
from para.core.prompts import evaluation_prompts
from para.core.provenance import provenance
from para.core.residency import Offload
from para.core.sampling import PromptSpec, generate, image_name, valid_image
from para.core.trainer import Trainer, TrainResult
from para.run import folder
from para.run.folder import run_dir_of
from para.run.model_card import write_model_card
from para.run.preflight import preflight
from para.run.registry import METHODS
from para.tracking.loggers import artifact_name, build_logger, image_grid, log_scores, open_image, with_rate

log = logging.getLogger(__name__)

OOM_HINT = (
    "out of GPU memory. Options: train.gradient_checkpointing=true, train.mixed_precision=bf16, "
    "model.weights_dtype=bf16, a smaller model.resolution (e.g. 512), train.optimizer=adamw8bit or adafactor, "
    "sample.batch_size=1"
)

# submitit ends a job that SLURM preempts or times out with sys.exit(-1) (after requeueing it); so does Ctrl-C.
DISK_FULL_WAY_ON = (
    "re-run the same command: it continues from the last checkpoint (train.keep_checkpoints=1 or "
    "train.checkpoint_every=0 write less); or put the run on a bigger disk (hydra.run.dir=...)"
)

INTERRUPTED = (
    "interrupted ({err}): preempted, timed out or stopped; a requeued job, or a rerun with resume=true, "
    "continues from the last checkpoint"
)


def flip_p(cfg: DictConfig) -> float:
    """The training photos' mirror probability: `data.flip_p`, unless the subject must not be mirrored (text, logos,
    asymmetric print: `subject.flip=false` in conf/subject/)."""
    return cfg.data.flip_p if cfg.subject.flip else 0.0


def sample_prompts(cfg: DictConfig) -> list[PromptSpec]:
    pairs = evaluation_prompts(cfg.subject.kind, cfg.data.token, cfg.subject.class_word, cfg.subject.prompts)
    pairs = pairs[: cfg.sample.num_prompts] if cfg.sample.num_prompts else pairs
    return [PromptSpec(i, p, clean) for i, (p, clean) in enumerate(pairs)]


class Run:
    """State of one run while it executes; `execute()` is the whole pipeline.

    `base`: a loaded base model shared with other runs of the same process (para.run.worker.SharedBase: its
    `pipeline(model_cfg, device)`, `before_attach(pipe, method)` and `after_run(pipe, method, ok)`); None: the run
    loads its own."""

    def __init__(self, cfg: DictConfig, base: Any = None, checked: dict[str, Any] | None = None):
        self.cfg = cfg
        self.checked = checked  # what `preflight(cfg, run_dir)` returned, when the caller ran it (run.py does)
        self.run_dir = run_dir_of(cfg)
        self.resolution = cfg.model.resolution
        self.metrics: dict[str, Any] = {}
        self.base = base
        self.method: Method | None = None

    def write_metrics(self, **updates: Any) -> None:
        self.metrics.update(updates)
        atomic_write_json(self.run_dir / "metrics.json", self.metrics)

    def execute(self) -> dict:
        cfg = self.cfg
        with stop_on_signals():
            # every input and the resource plan, before the run folder exists; raises listing all problems
            found = preflight(cfg, self.run_dir) if self.checked is None else self.checked
            lock = FolderLock(self.run_dir, wait_s=cfg.lock_wait).acquire()
            began = False
            try:
                chosen = folder.plan(self.run_dir, cfg)  # again, under the lock: what the folder holds now
                if chosen.action == "skip":
                    log.warning("%s (overwrite=true to redo it)", chosen.note)
                    return {**chosen.metrics, "run_dir": str(self.run_dir)}  # a moved folder: where it is now
                if chosen.action == "score":
                    return self._score_only(chosen)
                device = resolve_device(cfg.device)
                torch.manual_seed(cfg.seed)
                pipe = self.base.pipeline(cfg.model, device) if self.base else load_pipeline(cfg.model, device)
                # what follows draws from the run's seed alone, whatever loading drew (or did not: a shared base)
                torch.manual_seed(cfg.seed)
                ok = False
                try:
                    photos = load_subject_photos(
                        cfg.data.root, cfg.subject.name, self.resolution, cfg.data.min_image_side, cfg.data.images
                    )
                    began = True
                    previous = folder.start(self.run_dir, chosen)
                    result = self._begin(previous, device, pipe, photos, found.get("resources"))
                    ok = True
                    return result
                finally:
                    if self.base:
                        self.base.after_run(pipe, self.method, ok)
            finally:
                lock.release(remove_created=not began)

    def _score_only(self, chosen: folder.Plan) -> dict:
        """A finished run whose samples were never scored (e.g. made with eval.enabled=false): score them."""
        from eval.score import score_run

        log.info("%s", chosen.note)
        self.metrics = {**chosen.metrics, "run_dir": str(self.run_dir)}
        self.write_metrics(scores=score_run(self.run_dir, self.cfg.eval))
        return self.metrics

    def _begin(self, previous: dict | None, device: torch.device, pipe, photos, plan: dict | None) -> dict:
        cfg = self.cfg
        config_dict = OmegaConf.to_container(cfg, resolve=True)
        atomic_write_text(self.run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        self.metrics = dict(previous or {})
        for stale in ("error", "failed_at", "interrupted_at", "signal"):  # what a previous attempt recorded
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
                "watermarked": watermarked(pipe),  # never: samples are scored as the model draws them
            },
        )
        exit_code, logger = 1, None
        try:  # a logger that cannot start (W&B) also marks the run failed
            logger = build_logger(cfg, self.run_dir, config_dict, previous)
            self.write_metrics(**logger.info())
            self._pipeline(pipe, photos, logger)
            exit_code = 0
        except (RunInterrupted, KeyboardInterrupt, SystemExit) as stop:
            # SystemExit: submitit ends a SLURM job it requeued (preempted, or near its time limit: SIGUSR2)
            name = stop.signal_name if isinstance(stop, RunInterrupted) else type(stop).__name__
            exit_code = stop.exit_code if isinstance(stop, RunInterrupted) else 1
            error = INTERRUPTED.format(err=repr(stop))
            self.write_metrics(status="interrupted", signal=name, error=error, interrupted_at=time.time())
            log.warning("%s: interrupted by %s; re-run the same command to continue", self.run_dir, name)
            raise
        except BaseException as err:
            if isinstance(err, torch.cuda.OutOfMemoryError):
                message = OOM_HINT
            elif is_disk_full(err):
                message = disk_full_message(self.run_dir, err, DISK_FULL_WAY_ON)
            else:
                message = f"{type(err).__name__}: {err}"
            self._record_failure(message)
            if isinstance(err, torch.cuda.OutOfMemoryError):
                raise RuntimeError(f"{self.run_dir}: {OOM_HINT}") from err
            if is_disk_full(err):
                raise DiskFull(message) from err
            raise
        finally:
            if logger is not None:
                logger.finish(exit_code)  # the W&B run ends as failed (exit code 1) on any error
        return self.metrics

    def _record_failure(self, message: str) -> None:
        """`status: failed` with the error; a disk too full even for metrics.json is said, not raised over the
        error that stopped the run."""
        try:
            self.write_metrics(status="failed", error=message, failed_at=time.time())
        except OSError as err:
            log.error(
                "%s: could not record the failure in metrics.json (%s); it still says running", self.run_dir, err
            )

    def _pipeline(self, pipe, photos, logger) -> None:
        cfg = self.cfg
        method: Method = METHODS[cfg.method.name](cfg.method, model_id(cfg.model))
        prior = self._prior(pipe) if cfg.train.prior_loss_weight > 0 else None
        if self.base:
            self.base.before_attach(pipe, method)
        self.method = method
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
            from eval.score import protocol_named, score_run

            scores = score_run(self.run_dir, cfg.eval)
            self.write_metrics(stage="scored", scores=scores)
            log_scores(logger, self.run_dir, scores, protocol_named(scores.get("protocol")).score_keys)
        write_model_card(self.run_dir, cfg, self.metrics)  # README.md: what was trained, scores, how to load it
        self.write_metrics(status="finished", finished_at=time.time())

    def _train(self, pipe, method: Method, params, photos, prior, logger, train_text: bool) -> TrainResult:
        cfg = self.cfg
        pixels, sizes = photos
        time_ids = photo_time_ids(sizes, self.resolution) if cfg.data.original_size == "photo" else None
        instance = SubjectLatents(pipe, pixels, flip_p(cfg), cache=cfg.train.cache_latents, time_ids=time_ids)
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
        """Class images from the base model for prior preservation, cached for every run that makes the same ones.

        The cache folder `<class_images_dir>/<model>/<class>/seed<k>-<digest>` is named by everything the images
        depend on, so a run's images are a function of its own config whoever made them first, and runs writing
        at once write identical files (each atomically). A file that does not decode whole is made again.
        """
        cfg, sc = self.cfg, self.cfg.sample
        prompt = cfg.train.class_prompt_template.format(class_word=cfg.subject.class_word)
        made_by = [model_id(cfg.model), cfg.model.weights_dtype, prompt, sc.steps, sc.guidance, sc.scheduler]
        made_by.append("unwatermarked")  # images of older versions may carry invisible_watermark's stamp
        digest = hashlib.sha256(json.dumps([*made_by, self.resolution]).encode()).hexdigest()[:12]
        class_dir = cfg.subject.class_word.replace(" ", "_")
        images = Path(cfg.train.class_images_dir) / cfg.model.name / class_dir / f"seed{cfg.seed}-{digest}"
        files = [images / image_name(0, i) for i in range(cfg.train.num_class_images)]
        for broken in [f for f in files if f.exists() and not valid_image(f, self.resolution)]:
            log.warning("class image %s is unreadable or of another size: making it again", broken)
            broken.unlink(missing_ok=True)  # a cache entry of ours; generate() writes it again, atomically
        generate(
            pipe,
            [PromptSpec(0, prompt, prompt)],
            images,
            seed=cfg.seed,
            images_per_prompt=cfg.train.num_class_images,
            steps=sc.steps,
            guidance=sc.guidance,
            resolution=self.resolution,
            batch_size=sc.batch_size,
            scheduler=sc.scheduler,
        )
        pixels = load_images(files, self.resolution)  # exactly these: the folder may hold more (other counts)
        return SubjectLatents(pipe, pixels, flip_p(cfg), cache=True), prompt  # mirrored only as the subject is


def _train_info(result: TrainResult, method: Method) -> dict:
    steps = sorted(result.step_seconds[1:] or result.step_seconds)  # the first step pays warm-up costs
    return {
        "losses": result.losses,
        "checkpoint_every": result.checkpoint_every,
        "wall_seconds": result.wall_seconds,
        "peak_memory_mb": result.peak_memory_mb,
        "resumed_from": result.resumed_from,
        "median_step_seconds": steps[len(steps) // 2] if steps else None,
        "method_summary": method.summary(),
    }


def execute(cfg: DictConfig, base: Any = None, checked: dict[str, Any] | None = None) -> dict:
    return Run(cfg, base, checked).execute()
