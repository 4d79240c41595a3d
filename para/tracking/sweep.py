"""Hydra multirun bookkeeping: a failed cell never stops a sweep, and every sweep ends with a report.

Hydra's sweeper re-raises the first failed job's exception once a batch is done (and then skips
`on_multirun_end`), and submitit re-raises a job's exception in the launching process. So in multirun mode
`run.py` turns a cell's error into its result (`cell_failed`), and `SweepReport` (a Hydra callback registered
under `hydra.callbacks` in conf/config.yaml) does the rest:

- `on_multirun_start` (launching process): makes a record folder `runs/.sweeps/<time>-<pid>/`;
- `on_job_end` (the job's process: the same one for the basic launcher, the SLURM or local job for submitit,
  which pickles this callback with its state): writes `<num>.json` = overrides, run folder, status, error;
- `on_multirun_end` (launching process): prints one line per cell and the failed cells with their errors,
  writes `summary.json`, moves Hydra's `multirun.yaml` next to it, and exits 1 if a cell failed.

A cell whose run folder holds a finished run is not redone (para.run.runner); it is reported as `skipped`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from para.core.provenance import slurm_info

log = logging.getLogger(__name__)


def cell_failed(err: BaseException, traceback: bool = True) -> dict[str, Any]:
    """The result of a failed multirun cell: logged here, reported by `SweepReport` when the sweep ends."""
    message = f"{type(err).__name__}: {err}"
    if traceback:
        log.exception("cell failed: %s", message)
    else:  # a user error (bad config, missing data): the message says what to fix
        log.error("cell failed: %s", message)
    return {"status": "failed", "error": message}


class SweepReport(Callback):
    """Records every multirun cell and reports the failed ones at the end (see the module docstring)."""

    def __init__(self, records_dir: str = "runs/.sweeps") -> None:
        self.records_dir = records_dir
        self.folder: Path | None = None  # set in the launching process; travels to submitit jobs by pickle
        self.started_at = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started_at = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.started_at))
        # absolute: SLURM jobs may start elsewhere; the folder must be on a file system they share
        self.folder = Path(self.records_dir).resolve() / f"{stamp}-{os.getpid()}"
        self.folder.mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self.folder is None:  # a single run (python run.py without -m)
            return
        num = OmegaConf.select(config, "hydra.job.num", default=0)
        record = {
            "num": num,
            "overrides": list(job_return.overrides or []),
            "run_dir": OmegaConf.select(config, "hydra.runtime.output_dir"),
            **job_result(job_return, self.started_at),
            **slurm_info(),  # the SLURM job (array task) and its requeues, when the cell ran as one
        }
        tmp = self.folder / f"{num}.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(record, indent=1, default=str))
        os.replace(tmp, self.folder / f"{num}.json")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.folder is None:
            return
        records = read_records(self.folder)
        multirun_yaml = Path(str(config.hydra.sweep.dir)) / "multirun.yaml"
        if multirun_yaml.is_file():  # keep the sweep's config with its records, not loose in the working dir
            shutil.move(multirun_yaml, self.folder / "multirun.yaml")
        summary = {"records": str(self.folder), "cells": records}
        (self.folder / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
        print(format_report(records, self.folder), flush=True)
        if any(r["status"] == "failed" for r in records):
            # Hydra turns a callback's exception into a warning; SystemExit is not an Exception, so it ends the
            # process with a failing status (make, CI and job schedulers see it).
            raise SystemExit(1)


def job_result(job_return: JobReturn, started_at: float) -> dict[str, Any]:
    """status (finished | skipped | failed) and error of one job, from what the task function returned or raised."""
    if job_return.status != JobStatus.COMPLETED:  # raised past run.py (it should not): still a failed cell
        err = job_return._return_value  # `.return_value` would re-raise it
        return {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    result = job_return.return_value if isinstance(job_return.return_value, dict) else {}
    status = result.get("status", "finished")
    if status == "finished" and (result.get("finished_at") or started_at) < started_at:
        status = "skipped"  # the run folder already held this finished run
    return {"status": status, "error": result.get("error")}


def read_records(folder: Path) -> list[dict[str, Any]]:
    records = [json.loads(p.read_text()) for p in folder.glob("*.json") if p.stem.isdigit()]
    return sorted(records, key=lambda r: r["num"])


def format_report(records: list[dict[str, Any]], folder: Path) -> str:
    """One line per cell (named by the overrides that differ between cells), then the failed cells' errors."""
    counts = {s: sum(r["status"] == s for r in records) for s in ("finished", "skipped", "failed")}
    lines = [f"sweep: {len(records)} cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f" ({folder})"]
    common = set.intersection(*(set(r["overrides"]) for r in records)) if len(records) > 1 else set()
    names = {r["num"]: " ".join(o for o in r["overrides"] if o not in common) for r in records}
    lines += [f"  #{r['num']} {r['status']:8s} {names[r['num']]}{_job(r)}" for r in records]
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        lines.append(f"FAILED cells ({len(failed)}); fix and rerun the same command (finished cells are skipped):")
        for r in failed:
            where = r["run_dir"] if r["run_dir"] and Path(r["run_dir"]).is_dir() else "no run folder"
            lines.append(f"  #{r['num']} {names[r['num']]}: {r['error']} ({where})")
    return "\n".join(lines)


def _job(record: dict[str, Any]) -> str:
    """` (SLURM job 12_0, requeued 1x)` for a cell that ran as a SLURM job, else nothing."""
    if "slurm_job_id" not in record:
        return ""
    restarts = record.get("slurm_restarts", 0)
    return f" (SLURM job {record['slurm_job_id']}" + (f", requeued {restarts}x)" if restarts else ")")


if __name__ == "__main__":  # python -m para.tracking.sweep runs/.sweeps/<sweep>: print a finished sweep's report again
    print(format_report(read_records(Path(sys.argv[1])), Path(sys.argv[1])))
