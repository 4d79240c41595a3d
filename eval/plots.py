"""Axis settings that keep the harness's plots readable whatever the scores (used by eval.table and experiments).

Scores of runs that barely differ (random backbones, a converged ablation) span 1e-5 or less. Left alone,
matplotlib then labels the axis with six-decimal ticks, or an offset such as "+2.143e-1" that readers miss,
and categorical labels run into one smear. The rules here: an axis spans at least `MIN_SPAN` of a score (0.01:
finer differences are below what the tables report as meaningful), at most six plain ticks with three decimals,
no offset; long category labels break at their hyphens; overlapping series keep distinct markers and line styles.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import cycle

MIN_SPAN = 0.01
STYLES = ("o-", "s--", "^:", "D-.", "v-", "P--")


def score_axis(ax, axis: str = "y", min_span: float = MIN_SPAN) -> None:
    """Widen a score axis to at least `min_span` around its data and give it at most six plain ticks."""
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    get_lim, set_lim = (ax.get_ylim, ax.set_ylim) if axis == "y" else (ax.get_xlim, ax.set_xlim)
    low, high = get_lim()
    if high - low < min_span:
        middle = (low + high) / 2
        set_lim(middle - min_span / 2, middle + min_span / 2)
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))  # ticks at round values: 3 decimals exact
    target.set_major_formatter(StrMethodFormatter("{x:.3f}"))


def category_axis(ax, labels: Sequence[str], width: int = 9) -> None:
    """Long category labels (layer subsets such as `noxattn-hspace-last`) broken at their hyphens onto short lines,
    in a smaller font, so neighbours never run into each other (slanted labels still collide at their ends)."""
    ax.set_xticks(range(len(labels)), [_wrap_at_hyphens(label, width) for label in labels], fontsize=8)


def _wrap_at_hyphens(label: str, width: int) -> str:
    lines, line = [], ""
    for part in label.replace("-", "- ").split(" "):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = part
        else:
            line += part
    return "\n".join([*lines, line])


def power_of_two_axis(ax, values: Sequence[int]) -> None:
    """A log2 axis (ranks) labelled with the values themselves (1 2 4 8 16), not 2^k."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(set(values))))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())


def styles():
    """(format, keyword arguments) per series: the first filled, the rest hollow with other markers and dashes,
    so a series lying exactly on another still shows."""
    for index, fmt in enumerate(cycle(STYLES)):
        yield fmt, ({} if index == 0 else {"markerfacecolor": "none", "markersize": 8})
