"""Training checkpoints (issue 18, item 2): only what exact resume needs, and gone once the adapter is saved."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import FAST, compose_config
from safetensors import safe_open
from safetensors.torch import load_file

from para.core.models import build_random_pipeline
from para.core.trainer import Trainer
from para.run.runner import execute

NO_SAMPLING = ("sample.enabled=false", "eval.enabled=false", "steps=4", "train.checkpoint_every=2")


def _cfg(tmp_path, name: str, *extra: str):
    return compose_config(*FAST, *NO_SAMPLING, f"run_dir={tmp_path / name}", *extra)


def test_a_finished_run_leaves_no_checkpoints_unless_asked(shared_tiny, tmp_path):
    execute(_cfg(tmp_path, "default", "method=para"))
    assert (tmp_path / "default" / "adapter.safetensors").is_file()
    assert not (tmp_path / "default" / "checkpoints").exists()
    execute(_cfg(tmp_path, "kept", "method=para", "train.keep_checkpoints_after_run=true"))
    assert [p.name for p in (tmp_path / "kept" / "checkpoints").iterdir()] == ["step000002"]


def test_dreambooth_checkpoint_holds_the_master_weights_and_optimizer_state_only(shared_tiny, tmp_path):
    """bf16 base weights: the checkpoint has every UNet parameter once, in its fp32 master dtype, and AdamW's two
    moments; no frozen part (VAE, text encoders), no bf16 copy: 12 bytes per parameter, headers aside."""
    cfg = _cfg(
        tmp_path,
        "db",
        "method=dreambooth",
        "model.weights_dtype=bf16",
        "train.optimizer=adamw",  # AdamW's two moments are the count here (every method's default)
        "train.keep_checkpoints_after_run=true",
    )
    execute(cfg)
    folder = tmp_path / "db" / "checkpoints" / "step000002"
    names = {n for n, _ in build_random_pipeline("tiny").unet.named_parameters()}
    n_params = sum(p.numel() for p in build_random_pipeline("tiny").unet.parameters())
    trainable = load_file(folder / "trainable.safetensors")
    assert {k.removeprefix("unet.") for k in trainable} == names and len(trainable) == len(names)
    assert {t.dtype for t in trainable.values()} == {torch.float32}
    with safe_open(str(folder / "optimizer.safetensors"), "pt") as f:
        moments = [f.get_tensor(k) for k in f.keys() if k.endswith(("exp_avg", "exp_avg_sq"))]  # noqa: SIM118
    assert sum(t.numel() for t in moments) == 2 * n_params and {t.dtype for t in moments} == {torch.float32}
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert 12 * n_params <= size < 12 * n_params * 1.01


@pytest.mark.parametrize("method", ["dreambooth", "para"])
def test_resume_from_a_checkpoint_gives_the_uninterrupted_run(shared_tiny, tmp_path, monkeypatch, method):
    """bf16 weights + autocast: interrupted right after the step-2 checkpoint, resumed: the same adapter, bit for
    bit, and the same loss curve as a run that was never interrupted."""
    common = (f"method={method}", "model.weights_dtype=bf16", "train.mixed_precision=bf16")
    straight = execute(_cfg(tmp_path, "straight", *common))
    save = Trainer.save_checkpoint

    def save_then_die(self, step, losses):
        save(self, step, losses)
        raise KeyboardInterrupt(f"killed after the checkpoint of step {step}")

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(Trainer, "save_checkpoint", save_then_die)
        execute(_cfg(tmp_path, "killed", *common))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        resumed = execute(_cfg(tmp_path, "killed", *common, "resume=true"))
    # the LR schedule's fast-forward is not an out-of-order step: no torch warning on every resumption
    assert not [w for w in said if "lr_scheduler.step()" in str(w.message)]
    assert resumed["train_info"]["resumed_from"] == 2
    assert resumed["train_info"]["losses"] == straight["train_info"]["losses"]
    a, b = (load_file(tmp_path / name / "adapter.safetensors") for name in ("straight", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "killed" / "checkpoints").exists()


def test_a_new_run_says_it_starts_and_only_a_run_with_checkpoints_speaks_of_them(tmp_path, caplog):
    """`make demo`'s first line on a fresh run reads as a start, not as a fault; a run whose checkpoints are all
    unreadable says so (issue 24)."""
    from types import SimpleNamespace

    from para.core.checkpoint import save_checkpoint

    def resume(folder):
        trainer = SimpleNamespace(
            checkpoint_dir=folder, method=SimpleNamespace(name="para"), cfg=SimpleNamespace(steps=4)
        )
        caplog.clear()
        with caplog.at_level("INFO", logger="para.core.trainer"):
            assert Trainer._resume(trainer) == (0, [], None)
        return caplog.text

    for fresh in (None, tmp_path / "none-yet"):
        said = resume(fresh)
        assert "from step 0" in said and "checkpoint" not in said
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 2, {"w": torch.zeros(1)}, {"state": {}, "param_groups": []}, {"losses": [1.0]}, keep=2)
    (folder / "step000002" / "trainable.safetensors").write_bytes(b"cut")
    said = resume(folder)
    assert "no readable checkpoint in" in said and "step000002" in said
