"""The world's Table 1 on a reduced grid (issue 27): the harness's own table code gives intervals, and the claims
table's verdicts are what the paired intervals say (slow: six short world runs)."""

from __future__ import annotations

import pandas as pd
import pytest

from eval.table import build
from para.run.config import compose_config
from para.run.worker import run_cells
from world import claims

SUBJECTS = ("sun_disc", "check_box", "eye_tri")
METHODS = ("para", "dreambooth")


@pytest.mark.slow
def test_a_reduced_world_table_has_intervals_and_verdicts_that_follow_them(tmp_path):
    common = ["model=world", "logger=none", "steps=200", "sample.num_prompts=10", "sample.images_per_prompt=2"]
    cells = [[f"method={m}", f"subject={s}", f"run_dir={tmp_path}/runs/{m}/{s}"] for m in METHODS for s in SUBJECTS]
    result = run_cells(common, cells)
    assert not result["failed"] and result["loads"] == 1  # one base for every cell
    out = tmp_path / "table1"
    tables = build(tmp_path / "runs", out, methods=list(METHODS), pair=("para", "dreambooth"))
    table = tables["table"].set_index("method")
    widths = []
    for method in METHODS:  # every score has its interval around the mean (a point where every subject agrees)
        for score in ("subject_identity", "prompt_fidelity", "leak"):
            lo, mean, hi = (table.loc[method, f"{score}{s}"] for s in ("_lo", "", "_hi"))
            assert lo <= mean <= hi, (method, score, lo, mean, hi)
            widths.append(hi - lo)
    assert max(widths) > 0
    assert compose_config("model=world").eval.backbones == "world" and "WORLD" in tables["markdown"]
    rows = claims.table1_claims(out)
    paired = pd.read_csv(out / "table1_paired_all.csv")
    assert set(paired["b"]) == {"dreambooth"} and len(rows) == 2  # prompt fidelity and leak vs DreamBooth
    for row in rows:
        metric = "prompt_fidelity" if "prompt fidelity" in row["claim"] else "leak"
        r = paired[paired["metric"] == metric].iloc[0]
        excludes_zero = r["diff_lo"] > 0 or r["diff_hi"] < 0
        assert ("inconclusive" not in row["verdict"]) == excludes_zero, (row, r.to_dict())
