"""The calibration's readings (world/calibrate.py): where identity saturates, which learning rate it picks, and the
world defaults it reports beside them — on made-up sweep points, so each rule is checked against a known answer."""

from __future__ import annotations

import pandas as pd

from world import calibrate


def _points(sweep: str, method: str, axis: str, rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"sweep": sweep, "method": method, "axis": axis, "value": v, "subject_identity": i, "prompt_fidelity": f}
            for v, i, f in rows
        ]
    ).assign(leak=0.0, train_seconds=1.0)


def test_saturation_is_the_fewest_steps_reaching_the_share_of_the_most():
    table = pd.concat(
        [
            # 0.72 >= 0.9 * 0.78: saturated at 400 even though 800 is a little higher
            _points("para_steps", "para", "steps", [("800", 0.78, 0.8), ("200", 0.40, 0.9), ("400", 0.72, 0.9)]),
            _points("lora_steps", "lora", "steps", [("200", 0.3, 1.0), ("400", 0.6, 1.0), ("800", 0.9, 1.0)]),
        ]
    )
    found = calibrate.saturation(table).set_index("method")
    column = next(c for c in found.columns if c.startswith("saturates at"))
    assert found.loc["para", column] == "400"
    assert found.loc["para", "steps swept"] == "200, 400, 800"  # in step order, whatever order the points came in
    assert found.loc["lora", column] == "800 or later (still rising)"


def test_the_learning_rate_pick_is_the_best_identity_that_keeps_the_prompts():
    table = _points("loha_lr", "loha", "method.lr", [("0.0003", 0.1, 0.99), ("0.001", 0.5, 0.95), ("0.003", 0.9, 0.6)])
    row = calibrate.learning_rates(table, {}).iloc[0]
    assert row["pick"] == "0.001"  # 0.003 learns more but keeps only 60 % of the prompts
    assert row["world default (conf/model_method)"] == "none (the SDXL setting)"
    nothing_faithful = _points("oft_lr", "oft", "method.lr", [("0.001", 0.2, 0.5), ("0.003", 0.4, 0.3)])
    assert calibrate.learning_rates(nothing_faithful, {}).iloc[0]["pick"] == "0.003"


def test_world_defaults_are_read_from_the_committed_presets():
    defaults = calibrate.world_defaults(["lora", "para", "no_such_method"])
    assert defaults["lora"]["method.lr"] == 1.0e-3 and defaults["lora"]["method.scale"] == 1.0
    assert defaults["para"]["method.gamma"] is None and defaults["para"]["steps"] == 800
    assert "no_such_method" not in defaults
    assert calibrate._describe(defaults["para"]).startswith("rank 16, gamma off")


def test_every_setting_has_a_run_folder_of_its_own():
    """Two different settings never share a run folder (the harness would refuse the second, and the sweep stop)."""
    settings_of: dict = {}
    for sweep in calibrate.SWEEPS.values():
        for cell in sweep.cells():
            settings_of.setdefault(calibrate.run_dir(cell), set()).add(frozenset(cell))
    shared = {folder: settings for folder, settings in settings_of.items() if len(settings) > 1}
    assert not shared
