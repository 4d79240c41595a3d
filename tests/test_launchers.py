"""Every Table 1 cell gets the card(s) its model needs, whatever launcher runs it (issue 25 item 1): the launcher
configs as composed, the environment a submitit job really sees, one cell per card at a time, and the preflight
that refuses SDXL quietly falling back to the CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import REPO, compose_config
from omegaconf import OmegaConf

from para.run import preflight
from para.run.checks import Cell, sdxl_on_a_gpu

PROBE = ("CUDA_VISIBLE_DEVICES",)  # os.getenv(*PROBE) in the job: what the cell's torch would see


def _launcher(name: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    from para.run.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


@pytest.mark.parametrize(("model", "gpus"), [("sdxl", 1), ("tiny", None), ("small", None), ("world", None)])
def test_the_gpu_count_of_every_launcher_follows_the_model(model, gpus):
    assert _launcher("processes", f"model={model}").gpus_per_node == gpus
    assert _launcher("slurm", f"model={model}").gpus_per_node == gpus
    assert _launcher("slurm_cpu", f"model={model}").gpus_per_node is None  # make's choice for tiny/small


def _processes(tmp_path: Path, model: str, **changes):
    """The `processes` launcher as Hydra instantiates it for `model` (its resolved config as keyword arguments)."""
    from hydra_plugins.para_launcher.processes import ProcessesLauncher

    params = OmegaConf.to_container(_launcher("processes", f"model={model}"), resolve=True)
    params.pop("_target_")
    params |= {"submitit_folder": str(tmp_path / "submitit" / "%j"), "gpu_lock_dir": str(tmp_path / "gpus")}
    return ProcessesLauncher(**{**params, "poll_s": 0.05, **changes})


def test_a_submitit_job_sees_its_own_card_for_sdxl_and_none_for_tiny(tmp_path, monkeypatch):
    """Real submitit jobs (a fresh process each) report the CUDA_VISIBLE_DEVICES they start with."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # the launcher's own cards: handed out, never others
    jobs = _processes(tmp_path, "sdxl").submit_all(os.getenv, [PROBE] * 3)
    seen = [job.result() for job in jobs]
    assert sorted(seen) in (["3", "3", "5"], ["3", "5", "5"])  # two cards, one cell on each at a time
    jobs = _processes(tmp_path, "tiny").submit_all(os.getenv, [PROBE] * 2)
    assert [job.result() for job in jobs] == ["", ""]  # the random models need no card: none is visible


class FakeJob:
    """A cell that finishes after a few polls."""

    def __init__(self, executor: FakeExecutor, setup: list[str]):
        self.executor, self.setup, self.polls = executor, setup, 3

    def done(self) -> bool:
        self.polls -= 1
        if self.polls == 0:
            self.executor.running.remove(self)
        return self.polls <= 0


class FakeExecutor:
    """Records which cells run at the same time and the `setup` (card) each was started with."""

    def __init__(self):
        self.setup: list[str] = []
        self.running: list[FakeJob] = []
        self.together: list[list[FakeJob]] = []  # the running cells after each start

    def update_parameters(self, setup):
        self.setup = setup

    def submit(self, fn, *args):
        job = FakeJob(self, self.setup)
        self.running.append(job)
        self.together.append(list(self.running))
        return job


@pytest.mark.parametrize(("cards", "at_once"), [(["0"], 1), (["0", "1"], 2)])
def test_sdxl_cells_run_one_per_card(tmp_path, cards, at_once):
    from hydra_plugins.para_launcher.processes import CardLocks, run_cells

    executor = FakeExecutor()
    jobs = run_cells(executor, print, [()] * 5, 1, CardLocks(cards, tmp_path), at_once=99, poll_s=0)
    assert max(len(running) for running in executor.together) == at_once
    for running in executor.together:  # never two cells on one card
        exports = [job.setup[0] for job in running]
        assert len(set(exports)) == len(exports)
    assert {job.setup[0] for job in jobs} == {f"export CUDA_VISIBLE_DEVICES={card}" for card in cards}


def test_two_launchers_on_one_machine_never_share_a_card(tmp_path):
    """`make -j` starts one launcher per cell: a card another launcher holds is not handed out."""
    from hydra_plugins.para_launcher.processes import CardLocks

    first, second = CardLocks(["0", "1"], tmp_path), CardLocks(["0", "1"], tmp_path)
    assert first.take(1) == ["0"]
    assert second.take(1) == ["1"] and second.take(1) is None
    first.give_back(["0"])
    assert second.take(1) == ["0"]


def test_cpu_cells_start_together_with_no_card(tmp_path):
    from hydra_plugins.para_launcher.processes import run_cells

    executor = FakeExecutor()
    jobs = run_cells(executor, print, [()] * 4, 0, None, at_once=4, poll_s=0)
    assert len(executor.together[-1]) == 4
    assert all(job.setup == [] for job in jobs)  # submitit_local's CUDA_VISIBLE_DEVICES="" stays


@pytest.mark.parametrize(("model", "flag"), [("sdxl", "--gpus-per-node=1"), ("tiny", None)])
def test_slurm_jobs_ask_for_the_card_their_model_needs(tmp_path, model, flag):
    """The sbatch script submitit writes from the composed `slurm` launcher config."""
    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor writes (it needs srun to exist)

    params = OmegaConf.to_container(_launcher("slurm", f"model={model}"), resolve=True)
    script = _make_sbatch_string("python run.py", tmp_path, gpus_per_node=params["gpus_per_node"])
    assert (flag in script) if flag else "gpus" not in script


def test_sdxl_is_refused_before_loading_when_it_would_run_on_the_cpu(monkeypatch, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    def problems(*overrides: str) -> list[str]:
        return list(sdxl_on_a_gpu(Cell(compose_config("model=sdxl", f"run_dir={tmp_path}", *overrides), tmp_path)))

    (problem,) = problems()
    assert "would run on the CPU" in problem and "CUDA_VISIBLE_DEVICES=''" in problem and "device=cpu" in problem
    cfg = compose_config("model=sdxl", f"run_dir={tmp_path}")
    found = [name for name, _ in preflight.problems(cfg, tmp_path, skip=("backbones", "photos"))]
    assert "gpu" in found and not {"memory", "disk"} & set(found)  # no plan for a CPU it will not run on
    assert problems("device=cpu") == []  # asked for on purpose (make rehearsal)
    assert list(sdxl_on_a_gpu(Cell(compose_config("model=tiny", f"run_dir={tmp_path}"), tmp_path))) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert problems() == []  # a card is there: auto takes it
