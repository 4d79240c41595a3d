"""`make gpu-acceptance` (para.bench.gpu_acceptance) without a GPU: it says so and exits 0; its CPU side (the
DreamBooth kill-and-resume, every method in one worker, the summary) runs on the tiny model with device=cpu."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import DATA_ROOT

from para.bench import gpu_acceptance

TINY = ["model=tiny", "device=cpu", "logger=none", "eval.backbones=random", "sample.steps=2", f"data.root={DATA_ROOT}"]


def test_without_a_gpu_it_says_so_and_exits_0(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_acceptance.main(["--out", str(tmp_path / "gpu")]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out and not (tmp_path / "gpu").exists()


@pytest.mark.slow
def test_every_method_in_one_worker_gives_peaks_plan_step_times_and_the_para_lora_ratio(tmp_path):
    rows = gpu_acceptance.every_method(TINY, ["para", "lora"], 2, tmp_path)
    para, lora = rows
    assert para["status"] == lora["status"] == "finished" and lora["step_ratio_lora"] == 1.0
    assert para["step_ratio_lora"] == pytest.approx(para["step_seconds"] / lora["step_seconds"])
    assert para["plan_train_peak_gb"] > 0 and para["plan_total_gb"] > 0 and para["sample_images_per_second"] > 0


@pytest.mark.slow
def test_the_short_mode_runs_the_whole_acceptance_on_a_cpu(tmp_path):
    out = tmp_path / "gpu"
    argv = ["--model", "tiny", "--device", "cpu", "--short", "--methods", "para", "lora", "--steps", "2"]
    argv += [f"data.root={DATA_ROOT}"]
    assert gpu_acceptance.main([*argv, "--out", str(out)]) == 0
    record = json.loads((out / "acceptance.json").read_text())
    resume = record["dreambooth_resume"]
    assert resume["ok"] and resume["killed_at_step"] >= 8 and all(resume["checks"].values())
    assert [r["method"] for r in record["methods"]] == ["para", "lora"] and not record["base_weights_pretrained"]
