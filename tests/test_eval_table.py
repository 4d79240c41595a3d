"""Table 1 from fake metrics.json files: csv / md / png, banner, failed cells, paired difference, bootstrap."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from eval.backbones import load_backbones
from eval.options import EvalOptions
from eval.score import cached_embeddings, real_photo_paths
from eval.stats import bootstrap_ci
from eval.table import BANNER, main

DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "dreambooth" / "dataset"
SUBJECTS = {"dog": "live", "cat": "live", "duck_toy": "object"}
BASE = {"dog": 0.60, "cat": 0.50, "duck_toy": 0.40}  # per-subject difficulty, shared by all methods
SHIFT = {"para": 0.10, "lora": 0.0, "dreambooth": 0.05}


def small_data_root(root: Path) -> Path:
    """Two real photos per subject, shrunk: the real-images row then costs few forward passes."""
    for subject in SUBJECTS:
        (root / subject).mkdir(parents=True)
        for path in sorted((DATA_ROOT / subject).glob("*.jpg"))[:2]:
            Image.open(path).convert("RGB").resize((64, 64)).save(root / subject / path.name)
    return root


def prefill_cache(data_root: Path, cache: Path) -> None:
    """Known embeddings for the real photos, [1, 0] and [1, 1]: leave-one-out cosine 1/sqrt(2) per subject.

    The table then needs no forward pass; `real_reference` on computed embeddings is tested in test_eval_score.
    """
    models = load_backbones(EvalOptions(backbones="random"))
    vectors = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    for subject in SUBJECTS:
        for model in (models.dino, models.clip):
            paths = real_photo_paths(data_root, subject)
            cached_embeddings(paths, lambda images: vectors, model.id, model.pretrained, subject, cache)


def write_run(runs: Path, method: str, subject: str, seed: int, data_root: Path, status: str = "finished") -> None:
    value = BASE[subject] + SHIFT[method] + 0.01 * seed
    scores = {
        "dino": value, "clip_i": value + 0.2, "clip_t": 0.3 - SHIFT[method] / 2, "clip_score": 30.0,
        "lpips": 0.5, "ssim": 0.2, "backbones_pretrained": {"dino": False, "clip": False, "lpips": True},
        "backbones_pretrained_all": False,
    }  # fmt: skip
    metrics = {
        "status": status, "method": method, "subject": subject, "steps": 200 if method == "para" else 1000,
        "seed": seed, "trainable_params": {"para": 1000, "lora": 2000, "dreambooth": 9000}[method],
        "train_info": {"wall_seconds": 10.0 + seed, "peak_memory_mb": 100.0},
        "scores": scores if status == "finished" else {},
        "run_info": {"subject": {"name": subject, "class_word": "x", "kind": SUBJECTS[subject]},
                     "data": {"root": str(data_root), "token": "sks"}, "eval": {"backbones": "random"}},
    }  # fmt: skip
    folder = runs / method / subject / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("table")
    data_root, runs, out = small_data_root(tmp / "data"), tmp / "runs", tmp / "out"
    for method in SHIFT:
        for subject in SUBJECTS:
            if (method, subject) == ("dreambooth", "duck_toy"):
                continue  # a missing cell
            for seed in (0, 1):
                write_run(runs, method, subject, seed, data_root)
    write_run(runs, "dreambooth", "cat", 7, data_root, status="failed")
    (runs / "broken").mkdir()
    (runs / "broken" / "metrics.json").write_text("{not json")  # e.g. a run killed mid-write by an old writer
    prefill_cache(data_root, tmp / "cache")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        argv = ["--runs", str(runs), "--out", str(out), "--methods", "para", "lora", "dreambooth"]
        main([*argv, "--cache-dir", str(tmp / "cache")])
    return out, stdout.getvalue()


def test_writes_csv_md_and_png_with_the_expected_columns(table):
    out, _ = table
    for name in ("table1.csv", "table1.md", "tradeoff.png", "table1_by_kind.csv", "table1_paired.csv"):
        assert (out / name).stat().st_size > 0, name
    frame = pd.read_csv(out / "table1.csv")
    lead = ["method", "dino", "clip_i", "clip_t", "clip_score", "lpips", "ssim", "trainable_params",
            "train_seconds", "peak_memory_mb", "n_subjects", "backbones_pretrained"]  # fmt: skip
    assert list(frame.columns[: len(lead)]) == lead
    assert {"dino_lo", "dino_hi", "clip_t_lo", "train_seconds_hi"} <= set(frame.columns)
    assert list(frame["method"]) == ["para", "lora", "dreambooth", "real_images"]
    para = frame.set_index("method").loc["para"]
    # subject means over seeds (0.005 from seeds 0 and 1), then the mean over subjects
    assert para["dino"] == pytest.approx(np.mean([v + 0.10 + 0.005 for v in BASE.values()]))
    assert para["dino_lo"] <= para["dino"] <= para["dino_hi"]
    assert para["n_subjects"] == 3 and not para["backbones_pretrained"]
    assert frame.set_index("method").loc["dreambooth", "n_subjects"] == 2  # the failed run is not counted
    real = frame.set_index("method").loc["real_images"]
    assert real["dino"] == pytest.approx(2**-0.5) and real["clip_i"] == pytest.approx(2**-0.5)
    assert math.isnan(real["clip_t"]) and real["n_subjects"] == 3


def test_random_backbones_banner_in_md_and_stdout(table):
    out, stdout = table
    assert BANNER in (out / "table1.md").read_text()
    assert BANNER in stdout


def test_failed_and_missing_cells_are_listed(table):
    out, stdout = table
    failed = pd.read_csv(out / "failed_cells.csv").fillna("")
    assert set(zip(failed["method"], failed["subject"], failed["status"], strict=True)) == {
        ("dreambooth", "cat", "failed"),
        ("dreambooth", "duck_toy", "missing"),
        ("", "", "unreadable"),
    }
    md = (out / "table1.md").read_text()
    assert "Failed or missing cells (3)" in md and "dreambooth / duck_toy" in md and "broken" in md
    assert "3 failed or missing cells" in stdout


def test_paired_difference_and_kind_split(table):
    out, _ = table
    paired = pd.read_csv(out / "table1_paired.csv").set_index("metric")
    assert paired.loc["dino", "diff"] == pytest.approx(0.10)
    assert paired.loc["dino", "diff_lo"] == pytest.approx(0.10) and paired.loc["dino", "n_subjects"] == 3
    by_kind = pd.read_csv(out / "table1_by_kind.csv")
    para = by_kind[by_kind["method"] == "para"].set_index("kind")
    assert para.loc["object", "dino"] == pytest.approx(0.40 + 0.10 + 0.005)
    assert para.loc["live", "n_subjects"] == 2


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [0.1, 0.4, 0.35, 0.8, 0.55]
    first, second = bootstrap_ci(values), bootstrap_ci(values)
    assert first == second
    mean, lo, hi = first
    assert lo < mean < hi and mean == pytest.approx(np.mean(values))
    assert math.isnan(bootstrap_ci([0.3])[1]) and math.isnan(bootstrap_ci([])[0])
