"""Test groups that need a real thing on this machine: a SLURM cluster (`slurm`), a browser (`browser`).

Each check returns None when the thing is there, else the reason to skip, naming the command that installs it.
conftest.py skips the marked tests with that reason; PARA_REQUIRE="slurm browser" (set by .ci/run) turns a
missing one into an error instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SLURM_APT = "apt-get install slurm-wlm slurmdbd munge mariadb-server"
BROWSER_APT = "apt-get install chromium chromium-driver"


def local_slurm_conf() -> Path | None:
    """The config of the cluster `make slurm-up` started from this checkout, while its controller runs."""
    state = REPO / "runs" / ".slurm"
    pid = (state / "run" / "slurmctld.pid").read_text().strip() if (state / "run" / "slurmctld.pid").is_file() else ""
    return state / "etc" / "slurm.conf" if pid.isdigit() and Path(f"/proc/{pid}").is_dir() else None


def _answers(*cmd: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:  # e.g. no controller at the configured address: the clients retry
        return None


def slurm_missing() -> str | None:
    """Why the `slurm` tests cannot run here, or None. Points SLURM_CONF at the local cluster when it is up."""
    if shutil.which("sbatch") is None:
        return f"SLURM is not installed: `{SLURM_APT}`, then `make slurm-up`"
    if "SLURM_CONF" not in os.environ:
        conf = local_slurm_conf()
        if conf is None:
            return "no SLURM cluster is up: `make slurm-up` (or set SLURM_CONF to your cluster's slurm.conf)"
        os.environ["SLURM_CONF"] = str(conf)  # inherited by the sweeps the tests start, and by their jobs
    conf = os.environ["SLURM_CONF"]
    if not Path(conf).is_file():
        return f"SLURM_CONF={conf} does not exist: `make slurm-up`, or point it at your cluster's slurm.conf"
    ping = _answers("scontrol", "ping")
    if ping is None or ping.returncode != 0 or "UP" not in ping.stdout:
        return f"the SLURM controller does not answer (SLURM_CONF={conf}): `make slurm-up`"
    sacct = _answers("sacct", "-n", "-X", "-S", "now-1minutes")
    if sacct is None or sacct.returncode != 0 or sacct.stderr.strip():
        error = sacct.stderr.strip()[:200] if sacct else "no answer"
        return f"sacct cannot read job states ({error}): the cluster needs accounting (slurmdbd)"
    return None


def browser_missing() -> str | None:
    """Why the `browser` tests cannot run here, or None."""
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"{program} is not installed: `{BROWSER_APT}`"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: `make install` (it is a dev dependency)"
    return None


CHECKS = {"slurm": slurm_missing, "browser": browser_missing}
