"""Hydra multirun: every cell in its own run folder, failed cells reported at the end without stopping the rest,
finished cells skipped on a rerun; the submitit launcher (the SLURM code path, run as local processes) with W&B."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from conftest import DATA_ROOT, REPO
from hydra.core.utils import JobReturn, JobStatus
from multirun import FAST, break_cell, data_root, multirun, read_metrics
from omegaconf import OmegaConf
from wandb_offline import read_offline_run

from para.tracking.sweep import SweepReport


def test_failed_cells_are_reported_at_the_end_and_do_not_stop_the_others(tmp_path):
    # dog: trains; cat: no photos under data.root (fails before its run folder exists); duck_toy: corrupt adapter
    data = data_root(tmp_path, "dog", "duck_toy")
    break_cell(tmp_path / "runs/para/duck_toy", *FAST, "method=para", "subject=duck_toy", f"data.root={data}")
    args = [*FAST, "method=para", "subject=cat,dog,duck_toy", f"data.root={data}"]
    proc = multirun(tmp_path, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "sweep: 3 cells: 1 finished, 0 skipped, 2 failed" in out
    assert read_metrics(tmp_path / "runs/para/dog")["status"] == "finished"  # ran although cat failed before it
    broken = read_metrics(tmp_path / "runs/para/duck_toy")  # refused before it ran: the folder as it was
    assert broken == {"status": "running", "stage": "trained"}
    assert not (tmp_path / "runs/para/cat").exists()  # nothing left behind by a cell that never started
    (records,) = (tmp_path / "sweeps").iterdir()
    cells = json.loads((records / "summary.json").read_text())["cells"]
    cells = {next(o for o in c["overrides"] if o.startswith("subject=")): c for c in cells}
    assert {k: c["status"] for k, c in cells.items()} == {
        "subject=cat": "failed", "subject=dog": "finished", "subject=duck_toy": "failed"}  # fmt: skip
    assert (
        "cat" in cells["subject=cat"]["error"]
        and "adapter.safetensors cannot be read" in cells["subject=duck_toy"]["error"]
    )
    assert (records / "multirun.yaml").is_file() and not (tmp_path / "multirun.yaml").exists()
    report = out[out.index("FAILED cells (2)") :]
    assert "subject=cat" in report and "subject=duck_toy" in report and "subject=dog" not in report


def _job_return(status: JobStatus, value, overrides: list[str]) -> JobReturn:
    ret = JobReturn(overrides=overrides, status=status)
    ret.return_value = value
    return ret


def _job_config(num: int, run_dir: Path):
    return OmegaConf.create({"hydra": {"job": {"num": num}, "runtime": {"output_dir": str(run_dir)}}})


def test_sweep_report_records_every_cell_across_processes(tmp_path, capsys):
    sweep_cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    (tmp_path / "multirun.yaml").write_text("hydra: {}\n")
    report = SweepReport(records_dir=str(tmp_path / "records"))
    report.on_multirun_start(sweep_cfg)
    in_job = pickle.loads(pickle.dumps(report))  # what submitit does: the job gets a pickled copy
    assert in_job.folder == report.folder
    jobs = [
        _job_return(JobStatus.COMPLETED, {"status": "finished", "finished_at": report.started_at + 1}, ["s=a"]),
        _job_return(JobStatus.COMPLETED, {"status": "finished", "finished_at": report.started_at - 60}, ["s=b"]),
        _job_return(JobStatus.COMPLETED, {"status": "failed", "error": "DataError: no photos"}, ["s=c"]),
        _job_return(JobStatus.FAILED, RuntimeError("escaped"), ["s=d"]),
    ]
    for num, job in enumerate(jobs):
        in_job.on_job_end(_job_config(num, tmp_path / f"cell{num}"), job)
    with pytest.raises(SystemExit) as exit_info:
        report.on_multirun_end(sweep_cfg)
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "sweep: 4 cells: 1 finished, 1 skipped, 2 failed" in out
    assert "#2 s=c: DataError: no photos (no run folder)" in out and "#3 s=d: RuntimeError: escaped" in out
    assert (report.folder / "multirun.yaml").is_file()

    ok = SweepReport(records_dir=str(tmp_path / "records-ok"))
    ok.on_multirun_start(sweep_cfg)
    ok.on_job_end(_job_config(0, tmp_path), jobs[0])
    ok.on_multirun_end(sweep_cfg)  # nothing failed: no SystemExit
    assert "1 finished, 0 skipped, 0 failed" in capsys.readouterr().out


def test_sweep_report_names_each_cells_slurm_job_and_its_requeues(tmp_path, capsys, monkeypatch):
    sweep_cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    report = SweepReport(records_dir=str(tmp_path / "records"))
    report.on_multirun_start(sweep_cfg)
    done = _job_return(JobStatus.COMPLETED, {"status": "finished", "finished_at": report.started_at + 1}, ["s=a"])
    slurm = {"SLURM_JOB_ID": "15", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3", "SLURM_RESTART_COUNT": "2"}
    for name, value in slurm.items():  # what SLURM sets in an array task it requeued twice
        monkeypatch.setenv(name, value)
    report.on_job_end(_job_config(0, tmp_path), done)
    for name in slurm:
        monkeypatch.delenv(name)
    done.overrides = ["s=b"]
    report.on_job_end(_job_config(1, tmp_path), done)  # a cell run without SLURM
    report.on_multirun_end(sweep_cfg)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].endswith("#0 finished s=a (SLURM job 12_3, requeued 2x)") and lines[2].endswith("#1 finished s=b")


def test_single_runs_write_no_sweep_records(tmp_path):
    report = SweepReport(records_dir=str(tmp_path / "records"))
    report.on_job_end(_job_config(0, tmp_path), _job_return(JobStatus.COMPLETED, {}, []))
    report.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert not (tmp_path / "records").exists()


@pytest.mark.slow
def test_submitit_local_sweep_with_wandb_two_methods_two_subjects_one_broken_cell(tmp_path):
    """The issue's acceptance run: 2 methods x 2 subjects through hydra-submitit-launcher (local processes),
    W&B offline, real scoring with random-weight backbones (scores meaningless, flagged), one broken cell."""
    args = [
        "method=para,lora", "subject=dog,cat", "model=tiny", "steps=2", "resume=true", "logger=wandb",
        "train.log_every=1", "logger.sample_every=1", "logger.sample_prompts=1", "sample.num_prompts=1",
        "sample.images_per_prompt=1", "sample.steps=2", "eval.backbones=random", f"data.root={DATA_ROOT}",
    ]  # fmt: skip
    break_cell(tmp_path / "runs/lora/cat", *args[2:], "method=lora", "subject=cat")
    launcher = ["hydra/launcher=processes", f"hydra.launcher.submitit_folder={tmp_path}/submitit/%j"]
    proc = multirun(tmp_path, *launcher, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert "sweep: 4 cells: 3 finished, 0 skipped, 1 failed" in out
    assert "method=lora subject=cat: PreflightError" in out and "adapter.safetensors cannot be read" in out
    assert len(list((tmp_path / "submitit").glob("*/*_result.pkl"))) == 4  # one submitit job per cell
    for method, subject in (("para", "dog"), ("para", "cat"), ("lora", "dog")):
        run_dir = tmp_path / "runs" / method / subject
        metrics = read_metrics(run_dir)
        run = read_offline_run(run_dir)
        assert metrics["status"] == "finished" and run.exit_code == 0 and run.run_id == metrics["wandb"]["id"]
        assert run.group == method and f"subject:{subject}" in run.tags
        assert run.config["method"]["name"] == method and run.config["subject"]["name"] == subject
        assert run.summary["params/trainable"] == metrics["trainable_params"]
        assert [s for s, _ in run.history_of("train/loss")] == [1, 2]
        assert [s for s, _ in run.history_of("validation/samples")] == [1, 2]
        assert len(run.media("images/validation/*.png")) == 2
        assert run.summary["eval/dino"] == pytest.approx(metrics["scores"]["dino"])
        assert run.summary["eval/backbones_pretrained_all"] is False  # random backbones are flagged
        assert run.summary["eval/per_prompt"]["nrows"] == 1
        assert {a["type"] for a in run.artifacts} == {"adapter", "run_table"}
    # the broken cell is refused by its preflight before anything runs: no W&B run, its folder as it was
    assert not list((tmp_path / "runs/lora/cat").glob("wandb/offline-run-*"))
    assert read_metrics(tmp_path / "runs/lora/cat") == {"status": "running", "stage": "trained"}

    # a rerun (here with the default launcher) skips the finished cells: no new W&B runs, adapters untouched
    stamp = (tmp_path / "runs/para/dog/adapter.safetensors").stat().st_mtime_ns
    again = multirun(tmp_path, *args)
    assert again.returncode == 1 and "sweep: 4 cells: 0 finished, 3 skipped, 1 failed" in again.stdout
    assert (tmp_path / "runs/para/dog/adapter.safetensors").stat().st_mtime_ns == stamp
    assert read_offline_run(tmp_path / "runs/para/dog").exit_code == 0  # still exactly one W&B run


def _cluster_section() -> str:
    """The cluster page of the docs (docs/cluster.md, linked from the README)."""
    return (REPO / "docs" / "cluster.md").read_text()


def _launcher(name: str):
    from hydra import compose, initialize_config_dir

    from para.run.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
    return cfg.hydra.launcher


def _shown(value) -> str:
    """A config value as the README's table writes it."""
    if value is None:
        return "null"
    return json.dumps(OmegaConf.to_container(value)) if OmegaConf.is_config(value) else str(value)


def test_readme_cluster_section_matches_the_launcher_configs():
    import re

    section = _cluster_section()
    slurm = _launcher("slurm")
    assert slurm._target_.endswith("SlurmLauncher") and slurm.gpus_per_node == 1
    table = section[section.index("| field | default | sbatch option |") :].split("\n\n")[0]
    documented = {}
    for line in table.splitlines()[2:]:  # below the header and its rule
        names, defaults = (cell.strip() for cell in line.strip().strip("|").split("|")[:2])
        for name, default in zip(re.findall(r"`(\w+)`", names), defaults.split(", "), strict=True):
            documented[name] = default
    assert {"partition", "account", "timeout_min", "gpus_per_node", "mem_gb", "max_num_timeout"} <= documented.keys()
    for name, default in documented.items():
        assert _shown(slurm[name]) == default, (
            f"docs/cluster.md: {name} = {default}; conf/hydra/launcher/slurm.yaml: {slurm[name]}"
        )
    for launcher in set(re.findall(r"hydra/launcher=(\w+)", section)):
        assert (REPO / "conf" / "hydra" / "launcher" / f"{launcher}.yaml").is_file(), launcher
    assert _launcher("processes")._target_.endswith("ProcessesLauncher")  # submitit_local + a card per cell
