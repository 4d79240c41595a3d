"""The plots a reader looks at first stay readable when scores barely differ (eval/plots.py)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from eval.score import protocol_named
from eval.table import plot_tradeoff
from experiments.ablations import plot as plot_ablation


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions close after saving, kept open for inspection."""
    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    yield kept
    for fig in kept:
        matplotlib.pyplot.figure(fig.number)
        matplotlib.pyplot.clf()


def _overlaps(labels) -> list[tuple[str, str]]:
    boxes = [(label.get_text(), label.get_window_extent()) for label in labels if label.get_text()]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1 :] if box_a.overlaps(box_b)]


def _check_readable(fig) -> None:
    fig.canvas.draw()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            labels = axis.get_ticklabels()
            assert not _overlaps(labels), f"overlapping tick labels: {_overlaps(labels)}"
            assert axis.get_offset_text().get_text() == "", "an offset/exponent reader would miss"
            texts = [label.get_text() for label in labels if label.get_text()]
            assert len(texts) >= 2 and all(len(line) <= 20 for text in texts for line in text.split("\n")), texts


def _narrow_table() -> pd.DataFrame:
    rows = []
    for method, clip_t, dino in [
        ("para", 0.214321, 0.5012),
        ("lora", 0.214372, 0.5019),
        ("dreambooth", 0.21435, 0.5016),
    ]:
        rows.append(
            dict(method=method, clip_t=clip_t, clip_t_lo=clip_t - 2e-5, clip_t_hi=clip_t + 2e-5, dino=dino)
            | dict(dino_lo=dino - 3e-4, dino_hi=dino + 3e-4)
        )
    return pd.DataFrame(rows)


def test_tradeoff_ticks_are_readable_on_a_narrow_range(tmp_path, figures):
    plot_tradeoff(_narrow_table(), pd.DataFrame([{"dino": 0.502}]), tmp_path / "tradeoff.png", banner=True)
    assert (tmp_path / "tradeoff.png").stat().st_size > 0
    (fig,) = figures
    _check_readable(fig)
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    assert high - low >= 0.01 - 1e-12  # spans at least 0.01 of the score: no 1e-5 differences blown up
    assert {t.get_text() for t in ax.texts} >= {"para", "lora", "dreambooth"}  # each point named beside it


def test_ablation_plots_are_readable(tmp_path, figures):
    rows = [
        dict(ablation="subset", subset=s, dino=0.3, clip_i=0.6, clip_t=0.21)
        for s in ("noxattn", "selfattn", "attn", "xattn", "full", "noxattn-hspace-last")
    ]
    rows += [
        dict(ablation="rank", gamma=g, rank=r, dino=0.2143 + 1e-6 * r, clip_i=0.5, clip_t=0.2143)
        for g in ("0.025", "off")
        for r in (1, 2, 4, 8, 16)
    ]
    table = pd.DataFrame(rows)
    dreambench = protocol_named("dreambench")
    plot_ablation(table, "subset", tmp_path / "subset.png", "RANDOM", dreambench)
    plot_ablation(table, "rank", tmp_path / "rank.png", "RANDOM", dreambench)
    subset_fig, rank_fig = figures
    _check_readable(subset_fig)
    _check_readable(rank_fig)
    assert [t.get_text() for t in rank_fig.axes[0].get_xticklabels()] == ["1", "2", "4", "8", "16"]
    # two identical-looking series stay distinguishable: different markers, the second hollow
    first, second = rank_fig.axes[0].get_lines()[:2]
    assert first.get_marker() != second.get_marker() and second.get_markerfacecolor() == "none"
