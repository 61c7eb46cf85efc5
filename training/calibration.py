"""How honest a probability is: expected calibration error over equal-width bins, and its reliability plot.

Used for the labelling page's P(word wrong) (:mod:`training.word_checks`): the error knows nothing of words, the
plot's axes are labelled for them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

BINS = 10


def calibration_error(predicted: Sequence[float], observed: Sequence[bool], bins: int = BINS) -> tuple[float, list[tuple[float, float, int]]]:
    """Expected calibration error (equal-width bins of the predicted probability) and the reliability table."""
    table = []
    error = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, q in enumerate(predicted) if lo <= q < hi or (b == bins - 1 and q == 1.0)]
        if not members:
            continue
        mean_q = sum(predicted[i] for i in members) / len(members)
        rate = sum(observed[i] for i in members) / len(members)
        error += len(members) / len(predicted) * abs(mean_q - rate)
        table.append((round(mean_q, 4), round(rate, 4), len(members)))
    return error, table


def reliability_plot(table: Sequence[tuple[float, float, int]], error: float | None, words: int, path: Path, title: str) -> None:
    """The reliability table as a PNG: observed share against predicted probability, dots sized by count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect")
    if table:
        xs = [r[0] for r in table]
        ys = [r[1] for r in table]
        sizes = [20 + 4 * math.sqrt(r[2]) for r in table]
        ax.plot(xs, ys, "-", color="tab:blue")
        ax.scatter(xs, ys, s=sizes, color="tab:blue", label="out of fold (size: words)")
    shown = "-" if error is None else f"{error:.3f}"
    ax.set_title(f"{title}\ncalibration error {shown} on {words} words", fontsize=10)
    ax.set_xlabel("predicted P(word wrong)")
    ax.set_ylabel("observed share wrong")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
