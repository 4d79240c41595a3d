"""Run folders (issue 17): never delete what isn't ours, never lose paid-for work, and the status is the truth.

Each test names the issue item it covers; every one of them failed on the code before the fix.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from para.core import trainer
from para.run.runner import execute

SHORT = ["eval.enabled=false", "sample.enabled=false", "steps=8", "train.checkpoint_every=2"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _short_run(run_dir: Path) -> None:
    from conftest import QUICK

    from para.run.config import compose_config

    execute(compose_config(*QUICK, f"run_dir={run_dir}", *SHORT))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run of SHORT, made once for the module (tests work on copies): its adapter is the oracle a
    continued run must equal."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    _short_run(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A run of SHORT killed right after its step-4 checkpoint (`status: failed`), made once for the module."""
    run_dir = tmp_path_factory.mktemp("killed") / "run"
    save = trainer.Trainer.save_checkpoint

    def dying(self, done, losses):
        path = save(self, done, losses)
        if done == 4:
            raise RuntimeError("killed")
        return path

    trainer.Trainer.save_checkpoint = dying
    try:
        with pytest.raises(RuntimeError, match="killed"):
            _short_run(run_dir)
    finally:
        trainer.Trainer.save_checkpoint = save
    return run_dir


@pytest.fixture
def straight(finished) -> dict:
    return load_file(finished / "adapter.safetensors")


def _copy(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of a module fixture's run folder at `tmp_path/run` (where `quick_cfg` runs)."""
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def _same_adapter(run_dir: Path, oracle: dict) -> None:
    adapter = load_file(run_dir / "adapter.safetensors")
    assert adapter.keys() == oracle.keys()
    assert max((adapter[k] - oracle[k]).abs().max().item() for k in adapter) < 1e-5


@pytest.mark.parametrize("overwrite", [False, True])
def test_1_a_folder_of_someone_elses_files_is_refused_untouched(quick_cfg, tmp_path, overwrite):
    """Item 1: `hydra.run.dir=.` in a clone emptied the checkout; a folder the harness did not make is refused,
    naming it and what it holds, even with overwrite=true."""
    mine = tmp_path / "checkout"
    (mine / ".git").mkdir(parents=True)
    (mine / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (mine / "notes.txt").write_text("my notes")
    before = _tree(mine)
    with pytest.raises(ValueError) as info:
        execute(quick_cfg(*SHORT, f"overwrite={str(overwrite).lower()}", run_dir=mine))
    assert str(mine) in str(info.value) and ".git" in str(info.value) and "notes.txt" in str(info.value)
    assert _tree(mine) == before


def test_1_overwrite_removes_only_what_the_harness_wrote(quick_cfg, tmp_path, finished):
    run_dir = _copy(finished, tmp_path)
    (run_dir / "my_notes.txt").write_text("kept")
    again = execute(quick_cfg(*SHORT, "overwrite=true"))
    assert again["status"] == "finished" and (run_dir / "my_notes.txt").read_text() == "kept"


def test_2_rerunning_a_killed_run_continues_it(quick_cfg, tmp_path, killed, straight):
    """Item 2: the same command again (no resume=true) continued from the checkpoint instead of deleting it."""
    run_dir = _copy(killed, tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    metrics = execute(quick_cfg(*SHORT))
    assert metrics["status"] == "finished" and metrics["train_info"]["resumed_from"] == 4
    _same_adapter(run_dir, straight)


def test_2_resume_false_refuses_to_continue_or_discard(quick_cfg, tmp_path, killed):
    run_dir = _copy(killed, tmp_path)
    before = _tree(run_dir)
    with pytest.raises(ValueError, match="resume=false .*overwrite=true"):
        execute(quick_cfg(*SHORT, "resume=false"))
    assert _tree(run_dir) == before


def test_3_a_failed_start_keeps_the_users_own_empty_folders(tmp_path, monkeypatch):
    """Item 3: run.py removed empty parent folders the user had made before the run."""
    mine = tmp_path / "mine"
    mine.mkdir()
    argv = ["run.py", "model=tiny", "eval.backbones=random", f"data.root={tmp_path / 'nowhere'}"]
    monkeypatch.setattr(sys, "argv", [*argv, f"hydra.run.dir={mine / 'made' / 'by_hydra'}"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(REPO / "run.py"), run_name="__main__")
    assert info.value.code == 2
    assert mine.is_dir() and not (mine / "made").exists()


def test_5_sigterm_records_interrupted_checkpoints_and_continues(quick_cfg, monkeypatch, straight):
    """Item 5: SIGTERM (SLURM preemption, time limit) left `status: running` forever."""

    def not_handled(signum, _frame):  # before the fix, SIGTERM would end the test process
        raise RuntimeError("SIGTERM was not handled by the run")

    previous = signal.signal(signal.SIGTERM, not_handled)
    loss, calls = trainer.Trainer._loss, []

    def loss_then_sigterm(self, *args):
        calls.append(1)
        if len(calls) == 5:  # in the middle of the 5th step (no periodic checkpoint there: every 2)
            os.kill(os.getpid(), signal.SIGTERM)
        return loss(self, *args)

    cfg = quick_cfg(*SHORT)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(trainer.Trainer, "_loss", loss_then_sigterm)
            with pytest.raises(BaseException) as info:
                execute(cfg)
        assert type(info.value).__name__ == "RunInterrupted" and info.value.exit_code == 143, info.value
        assert signal.getsignal(signal.SIGTERM) is not_handled  # the run's handler is gone again
    finally:
        signal.signal(signal.SIGTERM, previous)
    run_dir = Path(cfg.run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["signal"] == "SIGTERM"
    assert (run_dir / "checkpoints" / "step000005").is_dir()  # saved on the way out, after the whole step
    resumed = execute(quick_cfg(*SHORT))
    assert resumed["status"] == "finished" and resumed["train_info"]["resumed_from"] == 5
    _same_adapter(run_dir, straight)


def test_6_a_finished_folder_with_other_settings_is_refused_naming_them(quick_cfg, tmp_path, finished):
    """Item 6: `method.rank=2 method.lr=0.5` on a finished folder printed the old scores and exited 0."""
    run_dir = _copy(finished, tmp_path)
    before = _tree(run_dir)
    with pytest.raises(ValueError) as info:
        execute(quick_cfg(*SHORT, "method.rank=2", "method.lr=0.5"))
    message = str(info.value)
    assert "method.rank: 16 there, 2 here" in message and "method.lr: 0.0001 there, 0.5 here" in message
    assert "overwrite=true" in message and "hydra.run.dir=" in message
    assert _tree(run_dir) == before


@pytest.mark.parametrize("other, names", [("steps=2", "steps: 8 there, 2 here"), ("method=lora", "method.name")])
def test_7_continuing_with_other_settings_than_the_checkpoints_is_refused(quick_cfg, tmp_path, killed, other, names):
    """Item 7: resuming with fewer steps than trained, or another method, recorded a result the folder does not
    hold, or failed vaguely."""
    run_dir = _copy(killed, tmp_path)
    before = _tree(run_dir)
    with pytest.raises(ValueError, match=names) as info:
        execute(quick_cfg(*SHORT, other, "resume=true"))
    assert "checkpoint at step 4" in str(info.value) and _tree(run_dir) == before


def test_7_a_checkpoint_past_the_runs_steps_is_refused(tmp_path):
    from para.core.trainer import TrainingError, check_resumable

    check_resumable(tmp_path, {"step": 4, "method": "para"}, "para", 8)
    with pytest.raises(TrainingError, match="step 12, past this run's steps=8"):
        check_resumable(tmp_path, {"step": 12, "method": "para"}, "para", 8)
    with pytest.raises(TrainingError, match="'lora'.*'para'"):
        check_resumable(tmp_path, {"step": 4, "method": "lora"}, "para", 8)


@pytest.mark.parametrize("bad", [["method.subset=[nomatch.*]"], ["method.rank=64", "method.gamma=null"]])
def test_8_errors_found_on_the_architecture_leave_no_folder(quick_cfg, tmp_path, bad):
    """Item 8: a subset matching no layer, or a rank as wide as a layer, left a failed run folder behind."""
    cfg = quick_cfg(*SHORT, *bad)
    with pytest.raises(ValueError, match="method para on the tiny UNet"):
        execute(cfg)
    assert not Path(cfg.run_dir).exists() and not list(tmp_path.iterdir())


def test_4_a_plain_run_checkpoints_by_default_small_states_often_full_unets_rarely(quick_cfg, tiny_pipe):
    """Item 4: the default train.checkpoint_every=0 left a killed plain run nothing to continue from."""
    cfg = quick_cfg()
    assert cfg.train.checkpoint_every is None  # automatic

    from para.adapter import PaRa
    from para.core.checkpoint import OFTEN, RARELY, checkpoint_interval

    params = PaRa(cfg.method, "m").attach(tiny_pipe.unet)
    assert trainer.Trainer(tiny_pipe, PaRa(cfg.method, "m"), params, cfg).checkpoint_every == OFTEN == 50
    sdxl_unet = [torch.empty(2_567_463_684, device="meta")]  # DreamBooth on SDXL: ~31 GB with AdamW moments
    assert checkpoint_interval(sdxl_unet, "adamw") == RARELY == 500
