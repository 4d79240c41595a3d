"""W&B logging, checked by reading the offline run files back (tests/wandb_offline.py), not by "it did not crash".

Offline mode, no network. Scoring is replaced by a stand-in with score_run's output shape (eval/score.py) and
distinct per-prompt numbers, so these tests check the logging of scores, not the scores (tests/test_eval_* do that;
tests/test_sweeps.py runs the real scorer with random backbones).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image
from safetensors import safe_open
from wandb_offline import read_offline_run, read_offline_runs

from eval import score as eval_score
from para.run.runner import Run, execute
from para.tracking import loggers
from para.tracking.loggers import artifact_name, run_name

# 4 steps, a loss point every step, a validation grid every 2 steps over 2 prompts, 2 prompts x 2 eval images
WANDB = ["logger=wandb", "train.log_every=1", "logger.sample_every=2", "logger.sample_prompts=2", "steps=4",
         "sample.num_prompts=2", "sample.images_per_prompt=2"]  # fmt: skip
SCORES = ("dino", "clip_i", "clip_t", "clip_score", "lpips", "ssim")


@pytest.fixture(autouse=True)
def wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # artifact staging copies and caches go to the test's folder, not ~/.local/share/wandb
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))


def stand_in_scores(run_dir, eval_cfg=None, **_kwargs) -> dict:
    """score_run's output for the run's real samples/prompts.json, with made-up, prompt-dependent numbers."""
    entries = json.loads((Path(run_dir) / "samples" / "prompts.json").read_text())
    per_prompt = [
        {"prompt_index": e["prompt_index"], "prompt": e["prompt"], "clean_prompt": e["clean_prompt"],
         "n_images": len(e["images"]), **{k: 0.1 * (j + 1) + 0.01 * e["prompt_index"] for j, k in enumerate(SCORES)}}
        for e in entries
    ]  # fmt: skip
    overall = {k: sum(p[k] for p in per_prompt) / len(per_prompt) for k in SCORES}
    return {**overall, "n_prompts": len(per_prompt), "n_images": sum(p["n_images"] for p in per_prompt),
            "backbones": {"dino": "random-dino"}, "backbones_pretrained": {"dino": False},
            "backbones_pretrained_all": False, "per_prompt": per_prompt}  # fmt: skip


def test_wandb_run_holds_config_params_curves_grids_scores_table_and_adapter(quick_cfg, monkeypatch):
    monkeypatch.setattr(eval_score, "score_run", stand_in_scores)
    cfg = quick_cfg(*WANDB)
    metrics = execute(cfg)
    run_dir = Path(cfg.run_dir)
    run = read_offline_run(run_dir)
    assert metrics["status"] == "finished" and run.exit_code == 0
    assert metrics["wandb"]["id"] == run.run_id and Path(metrics["wandb"]["dir"]) == run.folder
    assert run.name == run_name(run_dir) and run.group == "para"
    assert set(run.tags) == {"subject:dog", "steps:4", "seed:0", "model:tiny"}

    # the resolved config, exactly
    assert {k: v for k, v in run.config.items() if k != "_wandb"} == OmegaConf.to_container(cfg, resolve=True)
    # parameter counts
    assert run.summary["params/trainable"] == metrics["trainable_params"] > 0
    assert run.summary["params/unet_total"] > run.summary["params/trainable"]

    # training curves: one point per step, the same losses the run folder records
    losses = run.history_of("train/loss")
    assert [s for s, _ in losses] == [1, 2, 3, 4]
    assert [v for _, v in losses] == pytest.approx(metrics["train_info"]["losses"])
    assert [v for _, v in run.history_of("train/lr")] == pytest.approx([cfg.method.lr] * 4)
    assert all(v > 0 for _, v in run.history_of("train/grad_norm"))
    rates = dict(run.history_of("train/it_per_s"))
    assert rates.keys() == {1, 2, 3, 4}
    assert all(rates[s] == pytest.approx(1 / t) for s, t in run.history_of("train/step_seconds"))

    # one validation grid (both prompts side by side) at steps 2 and 4
    frames = run.history_of("validation/samples")
    assert [s for s, _ in frames] == [2, 4] and all(f["count"] == 1 for _, f in frames)
    grids = run.media("images/validation/*.png")
    assert len(grids) == 2
    side = cfg.model.resolution
    assert all(Image.open(g).size == (2 * side, side) for g in grids)

    # final scores as summary values, and the per-prompt table (prompt, image grid, scores)
    expected = stand_in_scores(run_dir)
    for key in SCORES:
        assert run.summary[f"eval/{key}"] == pytest.approx(expected[key]), key
    assert run.summary["eval/backbones_pretrained_all"] is False and run.summary["eval/n_images"] == 4
    assert run.summary["eval/per_prompt"]["_type"] == "table-file" and run.summary["eval/per_prompt"]["nrows"] == 2
    (table_file,) = run.media("table/eval/per_prompt_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["prompt_index", "prompt", "images", *SCORES]
    for row, want in zip(table["data"], expected["per_prompt"], strict=True):
        assert row[:2] == [want["prompt_index"], want["prompt"]]
        assert row[3:] == pytest.approx([want[k] for k in SCORES])
    (table_artifact,) = [a for a in run.artifacts if a["type"] == "run_table"]
    assert sum(p.startswith("media/images/") for p in table_artifact["files"]) == 2  # one grid per prompt

    # the adapter file as an artifact, byte-identical, with the file's own metadata
    (adapter,) = [a for a in run.artifacts if a["type"] == "adapter"]
    path = run_dir / "adapter.safetensors"
    with safe_open(str(path), "pt") as f:
        file_metadata = f.metadata()
    assert adapter["name"] == artifact_name(run_dir) and adapter["metadata"] == file_metadata
    entry = adapter["files"]["adapter.safetensors"]
    assert entry["size"] == path.stat().st_size
    assert entry["digest"] == base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_crashed_run_finishes_with_exit_code_1_and_resume_continues_the_same_wandb_run(quick_cfg, monkeypatch):
    def sampling_fails(*_args, **_kwargs):
        raise RuntimeError("injected sampling failure")

    overrides = ["logger=wandb", "train.log_every=1", "steps=2", "eval.enabled=false"]
    with monkeypatch.context() as patch:
        patch.setattr(Run, "_sample", sampling_fails)
        with pytest.raises(RuntimeError, match="injected"):
            execute(quick_cfg(*overrides))
    cfg = quick_cfg(*overrides, "resume=true")
    crashed = read_offline_run(cfg.run_dir)
    assert crashed.exit_code == 1  # finished, marked failed: not left "running" in the dashboard
    assert [s for s, _ in crashed.history_of("train/loss")] == [1, 2]  # what was logged before the crash is kept
    assert [a["type"] for a in crashed.artifacts] == ["adapter"]

    metrics = execute(cfg)  # resume: training is done, sampling runs again
    first, second = read_offline_runs(cfg.run_dir)
    assert metrics["status"] == "finished" and second.exit_code == 0
    assert second.run_id == first.run_id == metrics["wandb"]["id"]  # one W&B run per run folder


def test_rescoring_pushes_the_new_scores_to_the_same_wandb_run(quick_cfg, monkeypatch):
    """`python -m eval <run>` replaces the scores in metrics.json and in the run's W&B run (same id)."""
    from eval.__main__ import main as rescore_main

    monkeypatch.setattr(eval_score, "score_run", stand_in_scores)
    cfg = quick_cfg(*WANDB)
    execute(cfg)

    def doubled(run_dir, opts=None, **kwargs):  # "better backbones": every score changes
        scores = stand_in_scores(run_dir)
        return {**scores, **{k: 2 * scores[k] for k in SCORES}}

    monkeypatch.setattr("eval.__main__.score_run", doubled)
    assert rescore_main([str(cfg.run_dir), "--backbones", "random", "--no-cache"]) == 0
    metrics = json.loads((Path(cfg.run_dir) / "metrics.json").read_text())
    first, second = read_offline_runs(cfg.run_dir)
    assert second.run_id == first.run_id == metrics["wandb"]["id"] and second.exit_code == 0
    for key in SCORES:
        assert second.summary[f"eval/{key}"] == pytest.approx(metrics["scores"][key])
        assert second.summary[f"eval/{key}"] == pytest.approx(2 * first.summary[f"eval/{key}"])
    assert second.summary["eval/per_prompt"]["nrows"] == 2
    assert rescore_main([str(cfg.run_dir), "--backbones", "random", "--no-cache", "--no-wandb"]) == 0
    assert len(read_offline_runs(cfg.run_dir)) == 2  # --no-wandb: nothing pushed


def test_large_adapter_files_are_logged_as_references_not_uploads(quick_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(loggers, "UPLOAD_LIMIT_BYTES", 10)
    cfg = quick_cfg("logger=wandb")
    big = tmp_path / "adapter.safetensors"
    big.write_bytes(b"x" * 100)
    logger = loggers.build_logger(cfg, Path(cfg.run_dir), {"steps": 4})
    logger.log_artifact(big, "adapter-big", "adapter", {"method": "dreambooth"})
    logger.finish()
    (artifact,) = read_offline_run(cfg.run_dir).artifacts
    (entry,) = artifact["files"].values()
    assert entry["ref"] == big.resolve().as_uri() and artifact["metadata"] == {"method": "dreambooth"}


def test_logger_none_writes_only_the_jsonl_log(quick_cfg):
    cfg = quick_cfg()  # QUICK has logger=none
    logger = loggers.build_logger(cfg, Path(cfg.run_dir), {})
    logger.log({"train/loss": 1.0, "train/step_seconds": 0.5}, 1)
    logger.finish()
    assert logger.info() == {} and not (Path(cfg.run_dir) / "wandb").exists()
    lines = [json.loads(line) for line in (Path(cfg.run_dir) / "log.jsonl").read_text().splitlines()]
    assert lines[0]["train/loss"] == 1.0 and lines[-1]["finished"] is True


def test_image_grid_and_rate_helpers():
    a, b, c = (Image.new("RGB", (8, 6), color) for color in ("red", "green", "blue"))
    grid = loggers.image_grid([a, b, c], cols=2)
    assert grid.size == (16, 12) and grid.getpixel((9, 0)) == (0, 128, 0) and grid.getpixel((9, 7)) == (0, 0, 0)
    assert loggers.with_rate({"train/step_seconds": 0.25})["train/it_per_s"] == 4.0
    assert "train/it_per_s" not in loggers.with_rate({"train/loss": 1.0})


def test_dashboard_spec_builds_offline_with_the_comparison_panels(monkeypatch):
    pytest.importorskip("wandb_workspaces")
    import wandb

    from para.tracking import dashboard

    def no_network(*_args, **_kwargs):
        raise AssertionError("building the dashboard must not contact W&B")

    monkeypatch.setattr(wandb, "Api", no_network)
    report = dashboard.build_report("team", "para", model="sdxl", pretrained_only=True)
    workspace = dashboard.build_workspace("team", "para", model="sdxl")
    assert report.entity == "team" and report.project == "para" and "sdxl" in report.title
    grids = [b for b in report.blocks if hasattr(b, "runsets")]
    assert len(grids) == 3 and all(g.runsets[0].project == "para" for g in grids)
    # serialised as W&B stores them (panels and the workspace serialise offline; a report's run set looks up
    # the project id, so the report itself is only saved online)
    specs = {type(p).__name__ + str(i): p._to_model().model_dump(by_alias=True, exclude_none=True)["config"]
             for i, p in enumerate(p for g in grids for p in g.panels)}  # fmt: skip
    assert specs["BarPlot0"]["metrics"] == ["eval/dino", "eval/clip_i", "eval/clip_t"]
    assert specs["BarPlot0"]["groupBy"] == "method.value.name" and specs["BarPlot0"]["groupArea"] == "stderr"
    assert (specs["ScatterPlot1"]["xAxis"], specs["ScatterPlot1"]["yAxis"]) == (
        "summary:eval/clip_t",
        "summary:eval/dino",
    )
    assert specs["LinePlot2"]["metrics"] == ["train/loss"] and specs["LinePlot2"]["groupBy"] == "method.value.name"
    assert specs["MediaBrowser4"]["mediaKeys"] == ["validation/samples"]
    assert specs["MediaBrowser4"]["gridSettings"] == {"xAxis": "run", "yAxis": "step"}
    view = json.dumps(workspace._to_model().model_dump(by_alias=True, exclude_none=True), default=str)
    assert '"value": ["model:sdxl"]' in view and "eval/per_prompt" in view
    assert [s.name for s in workspace.sections] == ["Scores", "Training", "Samples"]
    assert "BarPlot" in dashboard.describe(report)


def test_a_world_run_logs_the_worlds_scores_to_the_same_dashboards(tmp_path):
    """A real world run (model=world, eval.backbones=world, no stand-in scorer): its W&B run holds the world's
    scores as summary values and a per-prompt table with the world's columns, under the method's group."""
    from conftest import compose_config

    from world.scorer import SCORE_KEYS as WORLD_KEYS

    cfg = compose_config("model=world", "subject=sun_disc", "method=para", *WANDB, f"run_dir={tmp_path / 'run'}")
    metrics = execute(cfg)
    run = read_offline_run(Path(cfg.run_dir))
    assert metrics["status"] == "finished" and run.group == "para" and "model:world" in run.tags
    assert metrics["scores"]["protocol"] == "world"
    assert run.summary["eval/subject_identity"] == pytest.approx(metrics["scores"]["subject_identity"])
    (table_file,) = run.media("table/eval/per_prompt_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["prompt_index", "prompt", "images", *WORLD_KEYS]
    assert [row[3] for row in table["data"]] == pytest.approx(
        [p["subject_identity"] for p in metrics["scores"]["per_prompt"]]
    )
