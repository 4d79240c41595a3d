"""Rewrite the resource plan's shipped counts (para/run/plan_counts.json, see para.run.plan_shipped).

    python -m para.run.ship_counts        # `make plan-counts`: after a change to what the plan counts

Counts every setting the table ships (minutes on 2 cores; settings `plan.cache_dir` holds for this code are taken
from there).
"""

from __future__ import annotations

import logging
import sys

import torch

from para.core.io import atomic_write_json
from para.run import plan, plan_count, plan_shipped

log = logging.getLogger(__name__)


def _workload() -> None:
    """Every setting the table ships: `make plan`'s rows, and the paper's commands on a CUDA card and a CPU."""
    plan.rows([24, 40, 80], "sdxl", None, None, [])
    for method in plan_shipped.PAPER_METHODS:
        cfg = plan.compose_config(f"method={method}", "subject=dog", "run_dir=unused")
        for device in (plan.CUDA, torch.device("cpu")):
            plan.estimate(cfg, device)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if argv:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    plan_count.forget()
    with plan_shipped.counting() as recorded:
        _workload()
    counts = dict(sorted(recorded.items()))
    atomic_write_json(plan_shipped.TABLE, {"libraries": plan_shipped.library_versions(), "counts": counts})
    plan_shipped._table.cache_clear()
    log.info("%s: %d counts (%s)", plan_shipped.TABLE, len(counts), plan_shipped.library_versions())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
