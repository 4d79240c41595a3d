"""`make bench`'s issue-25 parts, as plumbing (no timing asserts): QRs and operators per step of PaRa batched vs
one QR per layer, side by side with LoRA; the sweep timed as one worker vs one process per cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from para.bench import compare as bench
from para.bench import worker_saving
from para.bench.report import to_markdown


@pytest.mark.slow  # make bench's tooling: CI's slow set runs it
def test_bench_counts_qrs_and_operators_per_step_of_both_paras():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        records = bench.benchmark(
            ["tiny"],
            ["para", "para_qr_per_layer", "lora"],
            bench.Settings(steps=1, rounds=1, warmup=1, sample_images=0, cache_method=None),
            resolutions=[32],
        )
    finally:
        torch.set_num_threads(threads)
    by = {r["method"]: r for r in records}
    batched, per_layer = by["para"], by["para_qr_per_layer"]
    assert (batched["qr_per_step"], per_layer["qr_per_step"], by["lora"]["qr_per_step"]) == (2, 47, 0)  # tiny
    assert batched["dispatches_per_step"] < per_layer["dispatches_per_step"]
    assert batched["method_config"]["batch_qr"] and not per_layer["method_config"]["batch_qr"]
    assert batched["step_ratio_lora"] > 0 and per_layer["step_ratio_lora"] > 0
    assert "PaRa's QRs, one batched QR per B shape vs one QR per layer: QRs per step 2 vs 47" in to_markdown(records)


def test_the_worker_bench_times_the_same_cells_both_ways(monkeypatch, tmp_path):
    commands: list[list[str]] = []
    monkeypatch.setattr(worker_saving, "_timed", lambda argv: commands.append(argv) or 2.0)
    sweep = worker_saving.cells()
    assert len(sweep) == 6
    record = worker_saving.measure("small", sweep, tmp_path)
    separate, (worker,) = commands[:-1], commands[-1:]
    assert [c[1] for c in separate] == ["run.py"] * 6 and worker[1:3] == ["-m", "para.run.worker"]
    assert worker.count("--cell") == 6 and all("model=small" in c for c in commands)
    assert (record["separate_seconds"], record["worker_seconds"], record["speedup"]) == (12.0, 2.0, 6.0)
    assert worker_saving.main(["--out", str(tmp_path / "out")]) == 0
    written = json.loads(Path(tmp_path / "out" / "worker.json").read_text())
    assert written[0]["cells"] == [" ".join(c) for c in sweep]
    assert "one worker vs one process per cell" in (tmp_path / "out" / "worker.md").read_text()
