"""Faults never lose finished work: atomic writes, corrupt checkpoints, OOM, wrong or unsafe adapter files."""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import REPO

from para.core.checkpoint import latest_checkpoint, save_checkpoint
from para.core.io import atomic_save_safetensors, atomic_write_json
from para.core.method import AdapterFileError, read_adapter_file
from para.run.runner import execute


def test_atomic_write_keeps_the_old_file_when_the_write_dies(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"status": "finished"})

    def dying_dumps(*_args, **_kwargs):
        raise KeyboardInterrupt  # a kill in the middle of serializing

    monkeypatch.setattr(json, "dumps", dying_dumps)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_json(path, {"status": "half"})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"status": "finished"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"], "no temp file may be left behind"


def _checkpoint(folder: Path, step: int, value: float) -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    save_checkpoint(folder, step, {"w": torch.full((3,), value)}, opt.state_dict(), {"losses": [value]}, keep=5)


def test_corrupt_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    _checkpoint(folder, 4, 4.0)
    _checkpoint(folder, 8, 8.0)
    newest = folder / "step000008" / "trainable.safetensors"
    newest.write_bytes(newest.read_bytes()[:20])  # truncated by a kill
    (folder / ".step000012.tmp").mkdir()  # an unfinished write is never a candidate
    path, (trainable, optimizer, extra) = latest_checkpoint(folder)
    assert path.name == "step000004" and extra["step"] == 4 and trainable["w"][0] == 4.0
    assert optimizer["state"][0]["exp_avg"].shape == (3,)
    assert "step000008" in caplog.text and "falling back" in caplog.text


def test_checkpoint_keeps_only_the_newest(tmp_path):
    folder = tmp_path / "c"
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))])
    for step in (1, 2, 3):
        save_checkpoint(folder, step, {"w": torch.zeros(1)}, opt.state_dict(), {"losses": []}, keep=2)
    assert sorted(p.name for p in folder.iterdir()) == ["step000002", "step000003"]


def test_out_of_memory_names_the_memory_options(quick_cfg, monkeypatch):
    from para.core import trainer

    def oom(*_args, **_kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainer.Trainer, "train", oom)
    cfg = quick_cfg("eval.enabled=false")
    with pytest.raises(RuntimeError, match="gradient_checkpointing") as info:
        execute(cfg)
    assert "adamw8bit" in str(info.value) and "resolution" in str(info.value)
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "gradient_checkpointing" in metrics["error"]


def test_a_preempted_run_records_an_interruption_that_its_resumption_clears(quick_cfg, monkeypatch):
    """submitit ends a preempted or timed-out SLURM job with sys.exit(-1) mid-training (after requeueing it): the
    run says `interrupted`, not `failed`; once the requeued job finishes it, no stale error is left behind."""
    from para.core import trainer

    cfg = quick_cfg("sample.enabled=false", "eval.enabled=false", "resume=true")
    train = trainer.Trainer.train

    def preempted(self, *args, **kwargs):
        train(self, *args, **kwargs)
        raise SystemExit(-1)

    monkeypatch.setattr(trainer.Trainer, "train", preempted)
    with pytest.raises(SystemExit):
        execute(cfg)
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and "SystemExit(-1)" in metrics["error"]
    monkeypatch.setattr(trainer.Trainer, "train", train)
    metrics = execute(cfg)
    assert metrics["status"] == "finished"
    assert not {"error", "failed_at", "interrupted_at"} & metrics.keys()


def test_pickle_adapter_is_refused_without_loading(tmp_path):
    evil = tmp_path / "adapter.bin"
    evil.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(AdapterFileError, match="pickles can run code"):
        read_adapter_file(evil)
    disguised = tmp_path / "adapter.safetensors"
    disguised.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(AdapterFileError, match="not a valid safetensors"):
        read_adapter_file(disguised)


@pytest.mark.parametrize(
    "field, value, names",
    [
        ("method", "lora", ("'lora'", "'para'")),
        ("base_model", "other-model", ("'other-model'", "'random-tiny-seed0'")),
    ],
)
def test_adapter_for_another_method_or_base_is_refused(tiny_pipe, tmp_path, field, value, names):
    from para.adapter import PaRa

    para = PaRa({}, "random-tiny-seed0")
    para.attach(tiny_pipe.unet)
    state = para.state_dict(tiny_pipe.unet)
    meta = {**para.metadata(), field: value}
    path = atomic_save_safetensors({k: v.detach() for k, v in state.items()}, tmp_path / "a.safetensors", meta)
    with pytest.raises(AdapterFileError) as info:
        para.load_file(tiny_pipe.unet, path)
    assert all(name in str(info.value) for name in names), "the message names both"


def test_adapter_with_wrong_shapes_is_refused(tiny_pipe, tmp_path):
    from para.adapter import PaRa

    small = PaRa({"rank": 1, "gamma": None}, "m")
    small.attach(tiny_pipe.unet)
    path = small.save(tiny_pipe.unet, tmp_path / "a.safetensors")
    from para.core.models import build_random_pipeline

    other = build_random_pipeline("tiny")
    big = PaRa({"rank": 2, "gamma": None}, "m")
    big.attach(other.unet)
    with pytest.raises(ValueError, match="saved shape"):
        big.load_file(other.unet, path)


def test_reproduce_table1_remakes_only_unfinished_cells(tmp_path):
    """make's targets are metrics.json files; a finished cell is up to date, a failed one is redone."""
    prefix = "runs/tiny"
    done = REPO / prefix / "para/dog/steps20-seed0/metrics.json"
    failed = REPO / prefix / "lora/dog/steps100-seed0/metrics.json"
    backups = {p: p.read_bytes() if p.exists() else None for p in (done, failed)}
    try:
        for path, status in ((done, "finished"), (failed, "failed")):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"status": status, "scores": {}}, indent=2))
        plan = subprocess.run(
            [
                "make",
                "-n",
                "table1-cells",
                "MODEL=tiny",
                "SUBJECTS=dog",
                "SEEDS=0",
                "METHODS=para lora",
                "BACKBONES=random",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert plan.returncode == 0, plan.stderr
        runs = [line for line in plan.stdout.splitlines() if "para.run.worker" in line]  # LAUNCHER=local: one worker
        assert (
            len(runs) == 1 and runs[0].count("--cell") == 1 and "method=lora" in runs[0] and "resume=true" in runs[0]
        )
    finally:
        for path, data in backups.items():
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)


def test_tokenizer_cache_files_are_replaced_never_rewritten_in_place(tmp_path, monkeypatch):
    """Parallel sweep cells share the tiny models' tokenizer cache: a cell reading it while another rebuilds it
    must see a whole file (a rewrite in place once gave "Token ... out of vocabulary")."""
    import os

    from para.core.models import clip_tokenizer_files

    monkeypatch.setenv("PARA_CACHE", str(tmp_path))
    build = clip_tokenizer_files.__wrapped__  # past the per-process cache
    files = build()
    inodes = [os.stat(f).st_ino for f in files]
    with open(files[0]) as held:  # a reader that opened the old vocabulary
        build()
        assert len(json.loads(held.read())) == 49408  # still reads the whole old file
    assert [os.stat(f).st_ino for f in files] != inodes  # new files renamed into place
    assert len(json.loads(Path(files[0]).read_text())) == 49408
