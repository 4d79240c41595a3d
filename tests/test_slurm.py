"""Sweeps through a real SLURM cluster (`make slurm-up`: slurmctld, slurmd, slurmdbd + MariaDB for sacct):
Table 1 through make, a requeued (preempted) cell and a timed-out cell resuming from their checkpoints, failed cells
reported, `array_parallelism` honoured. Skipped, naming the install command, where there is no cluster. Also: what
`make slurm-up` says where it cannot start one (no cluster needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA_ROOT, REPO
from multirun import FAST, break_cell, data_root, multirun, multirun_cmd, multirun_env, read_metrics
from safetensors.torch import load_file

# hydra/launcher=slurm_cpu: one CPU and 4 GB per cell, what the single-node cluster offers
LAUNCHER = ["hydra/launcher=slurm_cpu"]


def _launcher(tmp_path: Path, **fields) -> list[str]:
    extra = [f"hydra.launcher.{k}={v}" for k, v in fields.items()]
    return [*LAUNCHER, f"hydra.launcher.submitit_folder={tmp_path}/submitit/%j", *extra]


def _slurm(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def _start_sweep(tmp_path: Path, *args: str, run_dir: str | None = None) -> subprocess.Popen:
    cmd = multirun_cmd(tmp_path, *args, run_dir=run_dir)
    with (tmp_path / "sweep.log").open("w") as log:  # the sweep writes to its own copy of the file handle
        return subprocess.Popen(cmd, cwd=REPO, env=multirun_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, tmp_path: Path, timeout: int) -> str:
    proc.wait(timeout=timeout)
    return (tmp_path / "sweep.log").read_text()


def _job_id(tmp_path: Path, deadline: float, task: int | None = None) -> str:
    """The SLURM id of the sweep's job (a one-cell sweep), or of its array task `task` (`<array job>_<task>`):
    submitit names the job's folder after it."""
    pattern = "[0-9]*" if task is None else f"[0-9]*_{task}"
    while time.monotonic() < deadline:
        found = [p.name for p in (tmp_path / "submitit").glob(pattern) if task is not None or p.name.isdigit()]
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError("the sweep submitted no SLURM job")


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.2)


def _states(job: str) -> list[str]:
    """Every state SLURM's accounting holds for a job, requeued attempts included (sacct --duplicates), once the
    job has ended (submitit returns as soon as the result file is written, a moment before the job ends)."""
    deadline = time.monotonic() + 120
    while True:
        listing = _slurm("sacct", "-n", "-X", "-D", "-j", job, "-o", "State", "--parsable2")
        states = [state.split()[0] for state in listing.splitlines()]  # "CANCELLED by 0" → CANCELLED
        if states and states[-1] not in ("PENDING", "RUNNING", "COMPLETING", "REQUEUED"):
            return states
        assert time.monotonic() < deadline, f"job {job} still {states} after 120 s"
        time.sleep(1)


@pytest.fixture(scope="module")
def step_seconds(tmp_path_factory) -> float:
    """Seconds per training step of the tiny model in a job on this cluster, from a one-cell sweep of 40 steps:
    the requeue tests size their training by it (in-process timings differ from a job's several-fold)."""
    tmp = tmp_path_factory.mktemp("calibrate")
    proc = multirun(tmp, *_launcher(tmp), *_cell(steps=40, every=1000), run_dir=f"{tmp}/cell")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return read_metrics(tmp / "cell")["train_info"]["median_step_seconds"]


def _training(step_seconds: float, seconds: float, checkpoints: int) -> tuple[int, int]:
    """(steps, checkpoint_every) for about `seconds` of training with about `checkpoints` checkpoints."""
    steps = min(10_000, max(60, round(seconds / step_seconds)))
    return steps, max(2, steps // checkpoints)


def _cell(steps: int, every: int) -> list[str]:
    return ["method=para", "subject=dog", "model=tiny", "logger=none", "sample.enabled=false", "eval.enabled=false",
            f"steps={steps}", f"train.checkpoint_every={every}", "resume=true", f"data.root={DATA_ROOT}"]  # fmt: skip


@pytest.mark.slurm
def test_reproduce_table1_through_the_cluster(tmp_path):
    """`make reproduce-table1 ... LAUNCHER=slurm`: each cell a SLURM job, both finished, the table written."""
    project = tmp_path / "project"  # this checkout, with its own runs/
    project.mkdir()
    for name in ("Makefile", "run.py", "conf", "para", "baselines", "eval", "experiments", ".venv"):
        (project / name).symlink_to(REPO / name)
    cells = f"sample.num_prompts=1 sample.images_per_prompt=2 sample.steps=2 data.root={DATA_ROOT}"
    cmd = ["make", "-o", ".venv/.installed", "reproduce-table1", "MODEL=tiny", "LAUNCHER=slurm", "SUBJECTS=dog",
           "METHODS=para lora", "SEEDS=0", "BACKBONES=random", f"TABLE1_ARGS={cells}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=project, env=multirun_env(tmp_path), capture_output=True, text=True, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("sweep: 1 cells: 1 finished, 0 skipped, 0 failed") == 2  # one sweep report per make cell
    assert "inaccurate" not in out  # submitit reads every job state from sacct (slurmdbd accounting)
    jobs = set()
    for cell in ("para/dog/steps20-seed0", "lora/dog/steps100-seed0"):
        metrics = read_metrics(project / "runs/tiny" / cell)
        assert metrics["status"] == "finished" and metrics["scores"]["n_images"] == 2, cell
        jobs.add(metrics["meta_info"]["slurm_job_id"])  # trained and scored inside a SLURM job
        assert (project / "runs/.submitit" / metrics["meta_info"]["slurm_job_id"]).is_dir()
    assert len(jobs) == 2
    table = (project / "runs/tiny/table1/table1.csv").read_text()
    assert "para" in table and "lora" in table
    assert (project / "runs/tiny/table1/table1.md").is_file()


@pytest.mark.slurm
def test_requeued_cell_resumes_and_ends_as_if_never_interrupted(tmp_path, step_seconds):
    """`scontrol requeue` while a cell trains (a preemption): the job comes back, resumes from its last checkpoint
    and ends with the adapter and losses of the same cell run without interruption (its twin in the sweep)."""
    steps, every = _training(step_seconds, seconds=60, checkpoints=20)
    twins = f"{tmp_path}/runs/requeued,{tmp_path}/runs/straight"  # cell 0 gets requeued, cell 1 is the reference
    proc = _start_sweep(tmp_path, *_launcher(tmp_path), *_cell(steps, every), run_dir=twins)
    job = _job_id(tmp_path, time.monotonic() + 120, task=0)
    checkpoints = tmp_path / "runs/requeued/checkpoints"
    _wait_for(lambda: any(checkpoints.glob("step*")), proc, "checkpoint", timeout=600)
    _slurm("scontrol", "requeue", job)
    out = _finish(proc, tmp_path, timeout=1200)
    assert proc.returncode == 0, out[-4000:]
    assert "sweep: 2 cells: 2 finished, 0 skipped, 0 failed" in out
    assert f"(SLURM job {job}, requeued 1x)" in out
    assert "inaccurate" not in out
    assert _states(job) == ["REQUEUED", "COMPLETED"]
    requeued, straight = read_metrics(tmp_path / "runs/requeued"), read_metrics(tmp_path / "runs/straight")
    assert requeued["meta_info"]["slurm_restarts"] == 1 and straight["meta_info"]["slurm_restarts"] == 0
    assert requeued["train_info"]["resumed_from"] >= every and straight["train_info"]["resumed_from"] is None
    assert "error" not in requeued
    losses = zip(requeued["train_info"]["losses"], straight["train_info"]["losses"], strict=True)
    assert max(abs(a - b) for a, b in losses) < 1e-5
    a, b = (load_file(tmp_path / "runs" / name / "adapter.safetensors") for name in ("requeued", "straight"))
    assert a.keys() == b.keys() and all((a[k] - b[k]).abs().max() < 1e-5 for k in a)


@pytest.mark.slurm
def test_timed_out_cell_is_requeued_by_submitit_and_finishes_from_its_checkpoint(tmp_path, step_seconds):
    """A cell whose training outlasts its time limit: SLURM signals it before the limit, submitit requeues it
    (max_num_timeout), the next attempt resumes from the last checkpoint, until the cell finishes."""
    steps, every = _training(step_seconds, seconds=120, checkpoints=30)  # > 90 s: never done in one attempt
    # --time=2 min, USR2 30 s before: SLURM checks once a minute, so it comes 30-90 s after the start, and each
    # attempt trains for that long less its start-up; a requeued job waits 15 s (cred_expire in slurm.conf.in)
    launcher = _launcher(tmp_path, timeout_min=2, signal_delay_s=30, max_num_timeout=20)
    proc = _start_sweep(tmp_path, *launcher, *_cell(steps, every), run_dir=f"{tmp_path}/runs/cell")
    job = _job_id(tmp_path, time.monotonic() + 120)
    out = _finish(proc, tmp_path, timeout=1800)
    assert proc.returncode == 0, out[-4000:]
    assert "sweep: 1 cells: 1 finished, 0 skipped, 0 failed" in out and "inaccurate" not in out
    metrics = read_metrics(tmp_path / "runs/cell")
    restarts = metrics["meta_info"]["slurm_restarts"]
    assert restarts >= 1 and f"(SLURM job {job}, requeued {restarts}x)" in out
    assert metrics["status"] == "finished" and "error" not in metrics  # the interruptions are history
    assert metrics["train_info"]["resumed_from"] >= every and len(metrics["train_info"]["losses"]) == steps
    assert _states(job) == ["REQUEUED"] * restarts + ["COMPLETED"]
    job_log = "".join(p.read_text() for p in (tmp_path / "submitit" / job).glob("*_log.*"))
    assert "this job is timed-out" in job_log and "Requeued job" in job_log


@pytest.mark.slurm
def test_a_job_killed_outside_python_ends_the_sweep_with_its_slurm_state(tmp_path):
    """`scancel` (as for a job killed for memory or a lost node): no result file ever comes, but sacct knows the
    job is gone, so the launching process stops waiting and names SLURM's state (without accounting it waits)."""
    proc = _start_sweep(tmp_path, *_launcher(tmp_path), *_cell(steps=3000, every=1000), run_dir=f"{tmp_path}/cell")
    job = _job_id(tmp_path, time.monotonic() + 120)
    _wait_for(lambda: (tmp_path / "cell" / "metrics.json").is_file(), proc, "run folder", timeout=600)
    _slurm("scancel", job)
    out = _finish(proc, tmp_path, timeout=300)
    assert proc.returncode != 0 and f"Job {job} (task: 0)" in out and "state: CANCELLED" in out, out[-3000:]
    assert _states(job) == ["CANCELLED"]  # "CANCELLED by 0": by root


@pytest.fixture(scope="module")
def serial_sweep(tmp_path_factory):
    """Three cells, one at a time (array_parallelism=1): cat has a corrupt photo, duck_toy a truncated adapter.
    Returns (the sweep's output and exit status, the array job id, what squeue showed every 0.2 s, the folder)."""
    tmp = tmp_path_factory.mktemp("serial")
    root = data_root(tmp, "dog", "duck_toy")
    (root / "cat").mkdir()
    for photo in sorted((DATA_ROOT / "cat").iterdir())[:3]:
        (root / "cat" / photo.name).symlink_to(photo)
    (root / "cat" / "99.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all")
    break_cell(tmp / "runs/para/duck_toy", *FAST, "method=para", "subject=duck_toy", f"data.root={root}")
    args = [
        *_launcher(tmp, array_parallelism=1),
        *FAST,
        "method=para",
        "subject=cat,dog,duck_toy",
        f"data.root={root}",
    ]
    proc = _start_sweep(tmp, *args)
    array = _job_id(tmp, time.monotonic() + 120, task=0).split("_")[0]
    seen = []
    while proc.poll() is None:
        listing = subprocess.run(["squeue", "-h", "-r", "-j", array, "-o", "%i %T"], capture_output=True, text=True)
        seen.append(dict(line.split() for line in listing.stdout.splitlines()))
        time.sleep(0.2)
    return proc.returncode, _finish(proc, tmp, timeout=60), array, seen, tmp


@pytest.mark.slurm
def test_failed_cells_are_reported_and_the_others_finish(serial_sweep):
    returncode, out, array, _, tmp = serial_sweep
    assert returncode == 1, out[-4000:]
    assert "sweep: 3 cells: 1 finished, 0 skipped, 2 failed" in out and "inaccurate" not in out
    report = out[out.index("FAILED cells (2)") :]
    # cat: its corrupt photo is found by the run's preflight, before training or a run folder
    assert "subject=cat: PreflightError" in report and "subject=duck_toy: PreflightError" in report
    assert "adapter.safetensors cannot be read" in report  # duck_toy's truncated adapter, refused before it ran
    (records,) = (tmp / "sweeps").iterdir()
    cells = json.loads((records / "summary.json").read_text())["cells"]
    (cat,) = [c for c in cells if "subject=cat" in c["overrides"]]
    assert "[photos]" in cat["error"] and "99.jpg" in cat["error"]
    assert read_metrics(tmp / "runs/para/dog")["status"] == "finished"
    broken = read_metrics(tmp / "runs/para/duck_toy")  # refused by its preflight: the folder as it was
    assert broken == {"status": "running", "stage": "trained"}
    assert not (tmp / "runs/para/cat").exists()  # bad photos are found before a run folder is made
    # the cells' own errors are results, not crashed jobs: SLURM saw three jobs that completed
    assert _states(f"{array}_0") == _states(f"{array}_1") == _states(f"{array}_2") == ["COMPLETED"]


@pytest.mark.slurm
def test_array_parallelism_runs_the_cells_one_at_a_time(serial_sweep):
    _, out, array, seen, _ = serial_sweep
    running = [{job for job, state in snapshot.items() if state == "RUNNING"} for snapshot in seen]
    assert max(len(r) for r in running) == 1, running
    assert set().union(*running) == {f"{array}_{i}" for i in range(3)}  # each seen running, never two at once
    rows = _slurm("sacct", "-n", "-X", "-j", array, "-o", "JobID,Start,End", "--parsable2").splitlines()
    spans = sorted(tuple(row.split("|")[1:]) for row in rows)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False)), spans


def _slurm_up(tmp_path: Path, *prefix: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": path or "/usr/sbin:/usr/bin:/sbin:/bin", "SLURM_LOCAL_DIR": str(tmp_path / "state")}
    cmd = [*prefix, "/bin/bash", str(REPO / "scripts/slurm/up.sh")]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_slurm_up_names_the_fix_when_it_cannot_start_a_cluster(tmp_path):
    tools = tmp_path / "bin"  # a machine with a shell and coreutils but none of the SLURM/munge/MariaDB programs
    tools.mkdir()
    for tool in ("dirname", "id", "mkdir"):
        (tools / tool).symlink_to(shutil.which(tool))
    if os.getuid() == 0:
        proc = _slurm_up(tmp_path, path=str(tools))
        assert proc.returncode == 1 and proc.stdout == ""
        assert (
            "missing munged mungekey" in proc.stderr and "apt-get install -y slurm-wlm slurmdbd munge" in proc.stderr
        )
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]  # nobody
    else:
        as_user = []
    proc = _slurm_up(tmp_path, *as_user)
    assert proc.returncode == 1 and "run this as root, e.g. sudo make slurm-up" in proc.stderr, proc.stderr
    assert not (tmp_path / "state").exists()  # nothing started, nothing written


# A process holding a run folder's lock for a while, as a predecessor SLURM is still killing (KillWait) would.
HOLD = """import sys, time
from para.core.lock import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
print(time.time(), flush=True)
"""


@pytest.mark.slurm
def test_a_job_whose_run_folder_is_still_held_waits_for_the_holder_then_runs(tmp_path):
    """Issue 21: a (requeued) job that finds its run folder held by a process still alive waits for the lock instead
    of writing beside it, says whom it waits for, and runs once the holder is gone."""
    run_dir = tmp_path / "runs" / "cell"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir), "20"], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    proc = multirun(tmp_path, *_launcher(tmp_path), *_cell(steps=4, every=2), "lock_wait=300", run_dir=str(run_dir))
    released = float(holder.stdout.readline())
    holder.wait(timeout=60)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert read_metrics(run_dir)["status"] == "finished"
    job_log = "".join(p.read_text() for p in (tmp_path / "submitit").glob("*/*_log.*"))  # .out and .err
    assert f"is in use by PID {holder.pid}" in job_log and "waiting up to 300 s" in job_log
    assert (run_dir / "config.yaml").stat().st_mtime >= released  # nothing written while the holder held it
