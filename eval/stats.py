"""Aggregation for the tables: subject means first, then a bootstrap over subjects.

Subjects, not images, are the independent units of DreamBench (30 subjects, 25 prompts x 4 images each):
images of one subject are correlated, so intervals come from resampling subjects. Seeds of one subject are
averaged first. The bootstrap (BCa, scipy) uses a fixed seed, so tables are reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

N_BOOT = 10_000
LEVEL = 0.95
SEED = 0


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = SEED
) -> tuple[float, float, float]:
    """(mean, lo, hi): BCa bootstrap interval of the mean (`scipy.stats.bootstrap`, bias-corrected and accelerated:
    better coverage than the percentile interval for the few subjects of a table); NaNs dropped; lo = hi = NaN
    below 2 values; lo = hi = the mean when every value is the same (no spread to resample)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.size < 2:
        return mean, float("nan"), float("nan")
    if np.ptp(x) <= 1e-12 * max(1.0, abs(mean)):  # rounding apart, one value: nothing to resample
        return mean, mean, mean
    result = stats.bootstrap(
        (x,), np.mean, n_resamples=n_boot, confidence_level=level, method="BCa", random_state=seed, vectorized=True
    )
    lo, hi = result.confidence_interval
    return mean, float(lo), float(hi)


def subject_means(
    runs: pd.DataFrame, columns: Sequence[str], by: Sequence[str] = ("method", "subject")
) -> pd.DataFrame:
    """One row per (method, subject): the mean over that cell's runs (seeds) of each column; keeps `kind`."""
    agg = {c: "mean" for c in columns}
    if "kind" in runs.columns:
        agg["kind"] = "first"
    return runs.groupby(list(by), as_index=False, sort=True).agg(agg)


def summarize(subjects: pd.DataFrame, columns: Sequence[str], by: Sequence[str]) -> pd.DataFrame:
    """One row per group of `by`: mean over subjects of each column with `_lo`/`_hi` and `n_subjects`."""
    rows = []
    for key, group in subjects.groupby(list(by), sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        for column in columns:
            row[column], row[f"{column}_lo"], row[f"{column}_hi"] = bootstrap_ci(group[column].to_numpy(float))
        row["n_subjects"] = int(group["subject"].nunique())
        rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(subjects: pd.DataFrame, a: str, b: str, columns: Sequence[str]) -> pd.DataFrame:
    """Per column: mean over subjects present for both methods of (a - b), with its bootstrap interval.

    Pairing by subject removes the between-subject spread (some subjects are simply harder), so the
    interval of the difference is tighter than comparing the two methods' intervals.
    """
    left = subjects[subjects["method"] == a].set_index("subject")
    right = subjects[subjects["method"] == b].set_index("subject")
    common = left.index.intersection(right.index)
    rows = []
    for column in columns:
        diff = (left.loc[common, column] - right.loc[common, column]).to_numpy(float)
        mean, lo, hi = bootstrap_ci(diff)
        rows.append(
            {"metric": column, "diff": mean, "diff_lo": lo, "diff_hi": hi, "n_subjects": int((~np.isnan(diff)).sum())}
        )
    return pd.DataFrame(rows, columns=["metric", "diff", "diff_lo", "diff_hi", "n_subjects"])
