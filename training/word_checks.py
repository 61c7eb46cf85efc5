"""Which words of a prefilled transcript to mark for checking, and how many are likely wrong: measured
on the human corrections.

Every served transcript comes with each word's probability (the mean of its tokens' probabilities under
CTranslate2's alignment, as faster-whisper computes it). Against the corrected text each hypothesis word
is *wrong* when the human substituted or removed it, or added words right after it (an insertion by the
human is a word the model missed: the annotator finds it by listening around its neighbour).

- :func:`mark_curve` / :func:`choose_threshold`: mark the words below a probability threshold; *recall* is
  the share of wrong words marked, *marked share* the share of all words marked. The threshold is the one
  with the highest recall that marks at most :data:`MAX_MARKED_SHARE` of the words.
- :func:`fit_calibration`: P(word wrong | its probability), an isotonic (monotone) fit. The page's number is
  the sum over a transcript's words: the expected count of wrong words. Its calibration error is measured
  out of fold (tasks split in folds; each fold predicted by a fit on the others), never on the fit's own data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import jiwer

from training.normalize import normalise

MAX_MARKED_SHARE = 0.25  # an annotator asked to check more than a quarter of the words checks none of them
DEFAULT_THRESHOLD = 0.5  # before any correction has been measured
MIN_CALIBRATION_WORDS = 200  # fewer corrected words: the page says the number is not calibrated yet
CALIBRATION_FOLDS = 5
BINS = 10


@dataclass(frozen=True)
class CheckedTranscript:
    """One corrected task: the prefilled words' probabilities and which of them the human changed."""

    key: str
    probabilities: tuple[float, ...]
    wrong: tuple[bool, ...]


def wrong_words(words: Sequence[str], correction: str) -> list[bool]:
    """For each hypothesis word (as the model wrote it), whether the human's correction changed it."""
    pieces = [normalise(w).split() for w in words]
    flat, owner = [], []
    for index, piece in enumerate(pieces):
        flat.extend(piece)
        owner.extend([index] * len(piece))
    wrong = [False] * len(words)
    reference = normalise(correction).split()
    if not flat:
        return wrong
    if not reference:
        return [bool(p) for p in pieces]
    output = jiwer.process_words(" ".join(reference), " ".join(flat))
    for chunk in output.alignments[0]:
        if chunk.type in ("substitute", "insert"):  # jiwer: "insert" = a word only the hypothesis has
            for position in range(chunk.hyp_start_idx, chunk.hyp_end_idx):
                wrong[owner[position]] = True
        elif chunk.type == "delete":  # words only the human wrote: blame the word before the gap
            position = chunk.hyp_start_idx - 1 if chunk.hyp_start_idx > 0 else 0
            wrong[owner[min(position, len(owner) - 1)]] = True
    return wrong


@dataclass(frozen=True)
class MarkPoint:
    threshold: float
    recall: float  # share of wrong words marked
    marked_share: float  # share of all words marked


def mark_point(samples: Sequence[CheckedTranscript], threshold: float) -> MarkPoint:
    words = wrong_count = marked = marked_wrong = 0
    for sample in samples:
        for p, wrong in zip(sample.probabilities, sample.wrong, strict=True):
            words += 1
            wrong_count += wrong
            if p < threshold:
                marked += 1
                marked_wrong += wrong
    return MarkPoint(threshold, marked_wrong / wrong_count if wrong_count else math.nan, marked / words if words else math.nan)


def mark_curve(samples: Sequence[CheckedTranscript]) -> list[MarkPoint]:
    """Recall and marked share at every distinct threshold (just above each word's probability)."""
    cuts = sorted({round(p, 4) + 1e-4 for s in samples for p in s.probabilities})
    return [mark_point(samples, t) for t in cuts]


def choose_threshold(samples: Sequence[CheckedTranscript], max_share: float = MAX_MARKED_SHARE) -> MarkPoint:
    """The threshold with the highest recall among those marking at most ``max_share`` of the words
    (ties: the fewer marks); :data:`DEFAULT_THRESHOLD` when nothing was corrected."""
    allowed = [p for p in mark_curve(samples) if p.marked_share <= max_share and not math.isnan(p.recall)]
    if not allowed:
        return MarkPoint(DEFAULT_THRESHOLD, math.nan, math.nan)
    return max(allowed, key=lambda p: (p.recall, -p.marked_share))


# ------------------------------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class Calibration:
    """P(word wrong) as a non-increasing step function of the word's probability (isotonic fit)."""

    probabilities: tuple[float, ...]  # ascending breakpoints
    wrong_rates: tuple[float, ...]  # fitted P(wrong) at each breakpoint
    words: int
    folds_error: float | None = None  # expected calibration error, out of fold
    reliability: list[tuple[float, float, int]] = field(default_factory=list)  # (mean predicted, observed, words)

    @property
    def calibrated(self) -> bool:
        return self.words >= MIN_CALIBRATION_WORDS

    def wrong_probability(self, p: float) -> float:
        if not self.probabilities:
            return 1.0 - p
        xs, ys = self.probabilities, self.wrong_rates
        if p <= xs[0]:
            return ys[0]
        if p >= xs[-1]:
            return ys[-1]
        hi = next(i for i, x in enumerate(xs) if x >= p)
        lo = hi - 1
        share = (p - xs[lo]) / (xs[hi] - xs[lo]) if xs[hi] > xs[lo] else 0.0
        return ys[lo] + share * (ys[hi] - ys[lo])

    def expected_wrong(self, probabilities: Sequence[float]) -> float:
        return sum(self.wrong_probability(p) for p in probabilities)

    def to_dict(self) -> dict:
        return {
            "probabilities": list(self.probabilities), "wrong_rates": list(self.wrong_rates), "words": self.words,
            "folds_error": self.folds_error, "reliability": [list(r) for r in self.reliability],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(tuple(data["probabilities"]), tuple(data["wrong_rates"]), int(data["words"]), data.get("folds_error"),
                   [tuple(r) for r in data.get("reliability") or []])


def _isotonic_decreasing(points: Sequence[tuple[float, bool]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pool-adjacent-violators on (probability, wrong): the best non-increasing fit of P(wrong)."""
    blocks: list[list[float]] = []  # [sum of wrong, count, sum of probability]
    for p, wrong in sorted(points):
        blocks.append([float(wrong), 1.0, p])
        # Non-increasing in p: a later block may not have a higher rate than the one before it.
        while len(blocks) > 1 and blocks[-1][0] / blocks[-1][1] > blocks[-2][0] / blocks[-2][1]:
            wrong_sum, count, p_sum = blocks.pop()
            blocks[-1][0] += wrong_sum
            blocks[-1][1] += count
            blocks[-1][2] += p_sum
    return tuple(b[2] / b[1] for b in blocks), tuple(b[0] / b[1] for b in blocks)


def _fit(samples: Sequence[CheckedTranscript]) -> Calibration:
    points = [(p, w) for s in samples for p, w in zip(s.probabilities, s.wrong, strict=True)]
    xs, ys = _isotonic_decreasing(points)
    return Calibration(xs, ys, len(points))


def calibration_error(predicted: Sequence[float], observed: Sequence[bool], bins: int = BINS) -> tuple[float, list[tuple[float, float, int]]]:
    """Expected calibration error (equal-width bins of the predicted probability) and the reliability table."""
    table = []
    total = len(predicted)
    error = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        members = [i for i, q in enumerate(predicted) if lo <= q < hi or (b == bins - 1 and q == 1.0)]
        if not members:
            continue
        mean_q = sum(predicted[i] for i in members) / len(members)
        rate = sum(observed[i] for i in members) / len(members)
        error += len(members) / total * abs(mean_q - rate)
        table.append((mean_q, rate, len(members)))
    return error, table


def fit_calibration(samples: Sequence[CheckedTranscript], folds: int = CALIBRATION_FOLDS) -> Calibration:
    """The fit on every sample, with its calibration error measured out of fold (tasks in ``folds`` groups)."""
    full = _fit(samples)
    if len(samples) < folds:
        return full
    predicted: list[float] = []
    observed: list[bool] = []
    ordered = sorted(samples, key=lambda s: s.key)
    for fold in range(folds):
        held = ordered[fold::folds]
        fitted = _fit([s for i, s in enumerate(ordered) if i % folds != fold])
        for sample in held:
            predicted.extend(fitted.wrong_probability(p) for p in sample.probabilities)
            observed.extend(sample.wrong)
    error, table = calibration_error(predicted, observed)
    return Calibration(full.probabilities, full.wrong_rates, full.words, error, table)


def reliability_plot(calibration: Calibration, path, title: str) -> None:  # noqa: ANN001 - a path-like
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect")
    if calibration.reliability:
        xs = [r[0] for r in calibration.reliability]
        ys = [r[1] for r in calibration.reliability]
        sizes = [20 + 4 * math.sqrt(r[2]) for r in calibration.reliability]
        ax.plot(xs, ys, "-", color="tab:blue")
        ax.scatter(xs, ys, s=sizes, color="tab:blue", label="out of fold (size: words)")
    error = "-" if calibration.folds_error is None else f"{calibration.folds_error:.3f}"
    ax.set_title(f"{title}\ncalibration error {error} on {calibration.words} words", fontsize=10)
    ax.set_xlabel("predicted P(word wrong)")
    ax.set_ylabel("observed share wrong")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
