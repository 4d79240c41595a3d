"""What a run holds while it trains and samples (issue 18, item 4), observed on the CPU.

Gradients die after each step and the optimizer state once training is over; DreamBooth samples in the weights
dtype; the frozen VAE and text encoders, whose outputs are cached, wait off the accelerator (`Offload`) while
training steps run and are back for validation grids and sampling. On this CPU-only machine the moves are
observed through `Offload`'s bookkeeping and by making the parked modules fail if anything called them.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FAST, compose_config

from para.core.trainer import Trainer
from para.run import runner

FROZEN = ("vae", "text_encoder", "text_encoder_2")


class Recorder:
    """Snapshots of the run's state at every training step and every `generate` call."""

    def __init__(self):
        self.trainers: list[Trainer] = []
        self.steps: list[dict] = []
        self.sampling: list[dict] = []
        self.moves: list[tuple[str, str]] = []  # (module, device) of every `.to()` on a frozen module, in order

    def state(self, pipe) -> dict:
        trainer = self.trainers[-1]
        unet = pipe.unet
        return {
            "parked": trainer.offload.parked,
            "unet_dtypes": {p.dtype for p in unet.parameters()},
            "grads": sum(p.grad is not None for p in unet.parameters()),
            "optimizer_tensors": sum(len(s) for s in trainer.optimizer.state.values()),
            "moves": list(self.moves),
        }


@pytest.fixture
def recorder(monkeypatch, shared_tiny):
    rec = Recorder()

    class RecordingTrainer(Trainer):
        def __init__(self, pipe, *args, **kwargs):
            super().__init__(pipe, *args, **kwargs)
            rec.trainers.append(self)
            for name in FROZEN:
                module = getattr(pipe, name)
                move = module.to

                def to(*args, _name=name, _move=move, **kwargs):
                    rec.moves.append((_name, str(args[0]) if args else str(kwargs)))
                    return _move(*args, **kwargs)

                module.to = to  # the fake device bookkeeping: which module was sent where, in order
                # anything that calls a parked module fails: training must not need them
                guarded = module.encode if name == "vae" else module.forward

                def guard(*args, _call=guarded, _name=name, **kwargs):
                    assert not self.offload.parked, f"{_name} was called while parked"
                    return _call(*args, **kwargs)

                setattr(module, "encode" if name == "vae" else "forward", guard)

        def train(self, *args, callbacks=(), **kwargs):
            def snapshot(step, _metrics):
                rec.steps.append(rec.state(self.pipe))

            return super().train(*args, callbacks=[snapshot, *callbacks], **kwargs)

    generate = runner.generate

    def recording_generate(pipe, prompts, folder, **kwargs):
        rec.sampling.append({"folder": folder.name, **rec.state(pipe)})
        return generate(pipe, prompts, folder, **kwargs)

    monkeypatch.setattr(runner, "Trainer", RecordingTrainer)
    monkeypatch.setattr(runner, "generate", recording_generate)
    return rec


def test_training_holds_only_what_it_needs_and_sampling_only_what_it_needs(recorder, tmp_path):
    cfg = compose_config(
        *FAST,
        "method=dreambooth",
        "model.weights_dtype=bf16",
        "train.mixed_precision=bf16",
        "logger.sample_every=1",
        "logger.sample_prompts=1",
        "eval.enabled=false",
        f"run_dir={tmp_path / 'run'}",
    )
    assert runner.execute(cfg)["status"] == "finished"
    steps, (grid1, grid2, final) = recorder.steps, recorder.sampling
    assert [s["folder"] for s in (grid1, grid2, final)] == ["step000001", "step000002", "samples"]
    for step in steps:  # training steps: frozen parts parked, fp32 master weights, no gradient left over
        assert step["parked"] and step["unet_dtypes"] == {torch.float32} and step["grads"] == 0
        assert step["optimizer_tensors"] > 0
    # parked before the first step: every frozen module was sent to the CPU
    assert {name for name, device in steps[0]["moves"] if device == "cpu"} == set(FROZEN)
    for grid in (grid1, grid2):  # grids: frozen parts back, the sampling form (bf16), the optimizer kept
        assert not grid["parked"] and grid["unet_dtypes"] == {torch.bfloat16} and grid["grads"] == 0
        assert grid["optimizer_tensors"] > 0
    # sampling: nothing of training is left; DreamBooth stays in the weights dtype
    assert not final["parked"] and final["unet_dtypes"] == {torch.bfloat16}
    assert final["grads"] == 0 and final["optimizer_tensors"] == 0


def test_uncached_training_keeps_the_frozen_parts_at_home(recorder, tmp_path):
    """train.cache_latents=false encodes photos and prompt every step: nothing may be parked."""
    cfg = compose_config(
        *FAST, "method=para", "train.cache_latents=false", "sample.enabled=false", f"run_dir={tmp_path / 'run'}"
    )
    assert runner.execute(cfg)["status"] == "finished"
    assert recorder.steps and not any(step["parked"] for step in recorder.steps)
