"""End to end through the CLI and the runner: run folder, missing weights, no silent overwrite, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA_ROOT, QUICK, REPO
from safetensors.torch import load_file

from para.run.runner import execute

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str, timeout: int = 300, python: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *python, "run.py", *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def test_cli_run_writes_the_run_folder(tmp_path):
    run_dir = tmp_path / "runs" / "para-dog"
    proc = _cli("method=para", "subject=dog", *QUICK, f"hydra.run.dir={run_dir}", "eval.enabled=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "adapter.safetensors", "metrics.json", "samples/prompts.json", "samples/p00_i00.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["method"] == "para" and metrics["subject"] == "dog"
    assert metrics["steps"] == 4 and metrics["seed"] == 0 and metrics["trainable_params"] > 0
    assert len(metrics["train_info"]["losses"]) == 4 and metrics["train_info"]["peak_memory_mb"] > 0
    meta = metrics["meta_info"]
    assert meta["base_weights_pretrained"] is False and "torch" in meta["packages"] and "git_sha" in meta
    prompts = json.loads((run_dir / "samples/prompts.json").read_text())
    assert prompts[0]["prompt"] == "a sks dog in the jungle" and prompts[0]["clean_prompt"] == "a dog in the jungle"


def test_missing_weights_fail_fast_with_the_ways_out(tmp_path):
    """The paper's command without SDXL's weights: refused naming the weights and the ways out, before the resource
    plan is counted (a run without weights has no plan to count; `make bench` times this cold refusal)."""
    run_dir, plan_cache = tmp_path / "never", tmp_path / "plan-cache"
    overrides = ("method=para", "subject=dog", "steps=200", f"hydra.run.dir={run_dir}", f"plan.cache_dir={plan_cache}")
    proc = _cli(*overrides, python=("-X", "importtime"))
    assert proc.returncode == 2
    timed = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[-1].strip() for line in timed}
    out = proc.stdout + proc.stderr
    assert "stabilityai/stable-diffusion-xl-base-1.0" in out and "model.path=" in out and "model=tiny" in out
    assert "Traceback" not in out and "[memory]" not in out
    # The refusal's cost is what it imports: the training stack and the eval networks (open_clip pulls in timm
    # and W&B, ~5 s of CPU) wait until every input is known good; the preflight reads open_clip's tag table alone.
    assert "para.run.config" in imported and "torch" in imported, "-X importtime printed nothing usable"
    assert not imported & {"para.run.runner", "para.core.sampling", "open_clip", "timm", "wandb", "lpips"}
    assert not plan_cache.exists(), "the plan of a run without weights was counted"
    assert not run_dir.exists(), "nothing may be left behind by a run that never started"


def test_missing_single_file_checkpoint_names_the_file(tmp_path):
    """The preflight `python run.py` runs (the command line's refusal itself: the test above)."""
    from para.run.preflight import check_one

    _, found, _ = check_one(["model.path=/nowhere/sdxl.safetensors", f"hydra.run.dir={tmp_path / 'x'}"])
    (weights,) = [text for name, text in found if name == "weights"]
    assert "/nowhere/sdxl.safetensors: no such file" in weights and "model=tiny" in weights
    assert not (tmp_path / "x").exists()


def test_finished_run_is_not_overwritten_unless_asked(quick_cfg, tmp_path):
    cfg = quick_cfg("eval.enabled=false", "sample.enabled=false")
    first = execute(cfg)
    adapter = Path(cfg.run_dir) / "adapter.safetensors"
    stamp = adapter.stat().st_mtime_ns
    again = execute(quick_cfg("eval.enabled=false", "sample.enabled=false", "steps=4"))
    assert again["finished_at"] == first["finished_at"] and adapter.stat().st_mtime_ns == stamp
    redone = execute(quick_cfg("eval.enabled=false", "sample.enabled=false", "overwrite=true"))
    assert redone["finished_at"] > first["finished_at"]


def test_failed_run_records_status_failed(quick_cfg, monkeypatch):
    from para.core import trainer

    def boom(*_args, **_kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(trainer.Trainer, "train", boom)
    cfg = quick_cfg("eval.enabled=false")
    with pytest.raises(RuntimeError, match="injected"):
        execute(cfg)
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "injected failure" in metrics["error"]


# ~30 s each (three runs as processes): the slow set, which CI runs. The default suite resumes from checkpoints
# in-process (tests/test_checkpoints.py; tests/test_folders.py: a SIGTERM mid-run).
@pytest.mark.slow
@pytest.mark.parametrize("method", ["para", "lora", "dreambooth"])
def test_resume_after_sigkill_gives_the_same_adapter_and_losses(tmp_path, method):
    """Kill -9 mid-training, restart with resume=true: same adapter and loss curve as an uninterrupted run."""
    common = [
        f"method={method}",
        "subject=dog",
        *QUICK,
        "steps=24",
        "train.checkpoint_every=4",
        "sample.enabled=false",
    ]
    straight = tmp_path / "straight"
    assert _cli(*common, f"hydra.run.dir={straight}").returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "run.py", *common, f"hydra.run.dir={killed}"],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not list((killed / "checkpoints").glob("step00000[8-9]")) and time.monotonic() < deadline:
        assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter.safetensors").exists()
    resumed = _cli(*common, f"hydra.run.dir={killed}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = load_file(straight / "adapter.safetensors"), load_file(killed / "adapter.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key
    la = json.loads((straight / "metrics.json").read_text())["train_info"]
    lb = json.loads((killed / "metrics.json").read_text())["train_info"]
    assert lb["resumed_from"] >= 8
    assert max(abs(x - y) for x, y in zip(la["losses"], lb["losses"], strict=True)) < 1e-5


def test_data_root_setting_is_used(quick_cfg, tmp_path):
    from para.run.preflight import PreflightError

    with pytest.raises(PreflightError, match="data.root"):
        execute(quick_cfg(f"data.root={tmp_path / 'nowhere'}"))
    assert not (tmp_path / "run").exists()
    assert DATA_ROOT.is_dir()


def test_lora_file_reloads_in_stock_diffusers_to_the_same_images(quick_cfg, tiny_pipe_template):
    """pipe.load_lora_weights + set_adapters(scale 2.2) samples exactly the images of the run that trained it."""
    import copy

    import numpy as np
    from PIL import Image

    from para.core.sampling import generate
    from para.run.runner import sample_prompts

    cfg = quick_cfg("method=lora", "method.lr=1e-2", "eval.enabled=false", "sample.images_per_prompt=1")
    execute(cfg)
    run_dir = Path(cfg.run_dir)
    pipe = copy.deepcopy(tiny_pipe_template)
    pipe.load_lora_weights(str(run_dir), weight_name="adapter.safetensors", adapter_name="subject")
    pipe.set_adapters(["subject"], adapter_weights=[2.2])

    def sample(folder: str) -> np.ndarray:
        out = generate(
            pipe,
            sample_prompts(cfg),
            run_dir / folder,
            seed=0,
            images_per_prompt=1,
            steps=cfg.sample.steps,
            guidance=cfg.sample.guidance,
            resolution=64,
            batch_size=1,
            progress=False,
        )
        return np.asarray(Image.open(out.parent / "p00_i00.png"), dtype=np.int16)

    original = np.asarray(Image.open(run_dir / "samples" / "p00_i00.png"), dtype=np.int16)
    assert np.abs(original - sample("reloaded")).max() <= 1
    pipe.set_adapters(["subject"], adapter_weights=[1.0])  # the scale matters: without 2.2 the images differ
    assert np.abs(original - sample("scale1")).max() > 1


def test_batched_sampling_keeps_every_images_own_seed(tiny_pipe_template, tmp_path):
    """Batches span prompts; an image is the same whichever batch it is drawn in (paired comparisons hold)."""
    import numpy as np
    from PIL import Image

    from para.core.sampling import PromptSpec, generate

    specs = [PromptSpec(0, "a sks dog on a beach", "a dog on a beach"), PromptSpec(3, "a sks dog", "a dog")]

    def sample(batch_size: int) -> dict[str, np.ndarray]:
        folder = tmp_path / f"batch{batch_size}"
        generate(
            tiny_pipe_template,
            specs,
            folder,
            seed=7,
            images_per_prompt=2,
            steps=2,
            guidance=5.0,
            resolution=64,
            batch_size=batch_size,
            progress=False,
        )
        return {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*.png"))}

    one, three = sample(1), sample(3)  # batch 3: [p00_i00, p00_i01, p03_i00], then [p03_i01]
    assert list(one) == ["p00_i00.png", "p00_i01.png", "p03_i00.png", "p03_i01.png"] == list(three)
    for name in one:
        assert np.abs(one[name] - three[name]).max() <= 1, name  # 1/255: batched matmuls may round differently
    assert np.abs(one["p00_i00.png"] - one["p00_i01.png"]).max() > 10  # each image has its own noise
