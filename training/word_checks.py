"""Which words of a prefilled transcript to mark for checking, and how many are likely wrong: learnt from
the human corrections.

Every served transcript comes with each word's probability (the mean of its tokens' probabilities under
CTranslate2's alignment, as faster-whisper computes it) and its token count. Against the corrected text
each hypothesis word is *wrong* when the human substituted or removed it, or added words right after it
(:func:`wrong_words`).

The model's own probability misses the mistakes an accent causes: it hears "lo verbo" and is sure of it.
Those mistakes repeat, so :class:`WordScorer` learns P(word wrong) from the corrections with a logistic
regression on

- the word's probability and how many tokens it took (a word the tokenizer had to spell out is rarely a
  real one);
- how often this very word was corrected before, and how often it was after the same previous word
  (each smoothed towards the wider rate);
- in how many corrected transcripts people actually said it (a class's vocabulary repeats; a word no
  correction ever contained is suspect);
- the silence before and after it (a word the model dropped leaves a gap, and the gap's neighbour is the
  word the correction blames; the first word's lead-in counts as silence before it). CTranslate2's word
  times leave no gap between words, so with the serving engine only the lead-in is ever non-zero,

mapped to the share actually wrong by an isotonic fit. A word is never its own evidence: while fitting,
each word's own verdict and its own transcript are left out of those counts. Measured on the term's pool of
accented classroom clips, whisper-base (bench/word_checks.py: threshold chosen on other sessions, a quarter
of the words marked): the probability alone marks about 54 % of the wrong words, the scorer about two
thirds; its P(wrong) is off by about 0.01 out of fold (figures: bench/README.md).

- *Marks*: the words whose P(wrong) reaches the cut that marks a quarter (:data:`MAX_MARKED_SHARE`) of the
  words of the pages to be corrected next (:func:`page_threshold`), not a cut carried over from the pages
  corrected before: those marked 6-30 % of the next round's words in `bench/term` (bench/README.md).
- *Likely wrong* on the page: the sum of P(wrong) over a transcript's words. Its calibration error and
  the recall of the marks are measured out of fold (:func:`fit_checks`): each fold of corrected tasks is
  scored by a scorer fitted on the others, never by one that saw it.

Below :data:`MIN_CALIBRATION_WORDS` corrected words there is no scorer: the model's own doubt (1 - its
probability) stands in for P(wrong), marked by the same rule, and the page says its number is not
calibrated yet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jiwer
import numpy as np

from training.calibration import calibration_error
from training.normalize import normalise

MAX_MARKED_SHARE = 0.25  # an annotator asked to check more than a quarter of the words checks none of them
DEFAULT_THRESHOLD = 0.5  # word probability below which a word is marked where no page's words are known
# No word less likely wrong than this is marked, however few are: a near-perfect version's pages are not a
# quarter marked. In `bench/term`'s rounds the quarter's cut was 0.20-0.59 (the demo's next round 0.33): never bound.
MIN_MARKED_P_WRONG = 0.1
MIN_CALIBRATION_WORDS = 200  # fewer corrected words: no scorer, and the page says it is not calibrated yet
CALIBRATION_FOLDS = 5
PRIOR_WEIGHT = 5.0  # pseudo-occurrences of the overall rate in a word's own correction rate
L2 = 1e-2
FEATURES = 8  # see WordScorer._rows


class TimedWord(Protocol):
    """A decoded word as the engine and the page keep it (ml_backend.engine.Word, sync.page_checks.PageWord)."""

    text: str
    start: float
    end: float
    probability: float
    tokens: int


@dataclass(frozen=True)
class CheckedTranscript:
    """One corrected task: its prefilled words and which of them the human changed."""

    key: str
    words: tuple[str, ...]  # as decoded
    probabilities: tuple[float, ...]
    tokens: tuple[int, ...]
    wrong: tuple[bool, ...]
    reference: str = ""  # the corrected text
    starts: tuple[float, ...] = ()  # each word's time in the clip, seconds (empty: not known)
    ends: tuple[float, ...] = ()

    @classmethod
    def from_correction(
        cls, key: str, words: Sequence[str], probabilities: Sequence[float], tokens: Sequence[int], reference: str,
        starts: Sequence[float] = (), ends: Sequence[float] = (),
    ) -> CheckedTranscript:
        return cls(key, tuple(words), tuple(probabilities), tuple(tokens), tuple(wrong_words(words, reference)), reference,
                   tuple(starts), tuple(ends))

    @classmethod
    def from_words(cls, key: str, words: Sequence[TimedWord], reference: str) -> CheckedTranscript:
        texts, probabilities, tokens, starts, ends = _columns(words)
        return cls.from_correction(key, texts, probabilities, tokens, reference, starts, ends)


def _columns(words: Sequence[TimedWord]) -> tuple[list[str], list[float], list[int], list[float], list[float]]:
    """The words' texts, probabilities, token counts, starts and ends: the parallel lists the scorer reads."""
    return ([w.text for w in words], [w.probability for w in words], [w.tokens for w in words],
            [w.start for w in words], [w.end for w in words])


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


# ------------------------------------------------------------------------------------------ the scorer


def _logit(p: float) -> float:
    p = min(1 - 1e-4, max(1e-4, p))
    return math.log(p / (1 - p))


START = "<s>"  # the "previous word" of a transcript's first word


def _previous_names(names: Sequence[str]) -> list[str]:
    """Each word's previous spoken word (punctuation, which normalises to nothing, skipped)."""
    out, last = [], START
    for name in names:
        out.append(last)
        if name:
            last = name
    return out


def silences(starts: Sequence[float], ends: Sequence[float], count: int) -> list[tuple[float, float]]:
    """Seconds of silence before and after each of ``count`` words: before the first word, its start; after the
    last, none (the page does not know the clip's length). Without times, no silence anywhere."""
    if len(starts) != count or len(ends) != count:
        return [(0.0, 0.0)] * count
    out = []
    for i in range(count):
        before = starts[i] - (ends[i - 1] if i else 0.0)
        after = starts[i + 1] - ends[i] if i + 1 < count else 0.0
        out.append((max(0.0, before), max(0.0, after)))
    return out


def _pair_key(previous: str, name: str) -> str:
    return f"{previous}\t{name}"


@dataclass
class WordScorer:
    """P(word wrong) from the word's probability and token count, its correction rate so far (alone and after
    the same word), and how often people said it in the corrections."""

    weights: list[float]
    mean: list[float]
    scale: list[float]
    corrected: dict[str, list[int]]  # normalised word -> [times seen, times wrong]
    base_rate: float
    # The regression's output mapped to the share of words actually wrong (an isotonic fit on the words it
    # learnt from, each scored without its own verdict): a logistic curve is only roughly the right shape.
    calibration_x: list[float] = field(default_factory=list)
    calibration_y: list[float] = field(default_factory=list)
    after: dict[str, list[int]] = field(default_factory=dict)  # "previous\tword" -> [times seen, times wrong]
    said: dict[str, int] = field(default_factory=dict)  # normalised word -> corrected transcripts containing it

    def _prior(self, word: str, exclude: tuple[int, int] = (0, 0)) -> float:
        seen, wrong = self.corrected.get(word, [0, 0])
        seen, wrong = seen - exclude[0], wrong - exclude[1]
        return (wrong + PRIOR_WEIGHT * self.base_rate) / (seen + PRIOR_WEIGHT)

    def _pair_prior(self, previous: str, word: str, word_prior: float, exclude: tuple[int, int]) -> float:
        seen, wrong = self.after.get(_pair_key(previous, word), [0, 0])
        seen, wrong = seen - exclude[0], wrong - exclude[1]
        return (wrong + PRIOR_WEIGHT * word_prior) / (seen + PRIOR_WEIGHT)

    def _said(self, word: str, own: frozenset[str], most: int) -> int:
        if not word:
            return most  # punctuation, never a wrong word: as said as the most said word
        return min(self.said.get(piece, 0) - (piece in own) for piece in word.split())

    def _rows(self, names: Sequence[str], probabilities: Sequence[float], tokens: Sequence[int],
              verdicts: Sequence[bool] | None, reference: str | None,
              times: tuple[Sequence[float], Sequence[float]] = ((), ())) -> np.ndarray:
        """One feature row per word. ``verdicts``/``reference``: the words were learnt from, and these are their
        own verdicts and transcript: left out of every count. ``times``: the words' starts and ends."""
        own = frozenset(normalise(reference).split()) if reference is not None else frozenset()
        most = max(self.said.values(), default=0)
        rows = []
        for name, previous, p, t, bad, (before, after) in zip(
            names, _previous_names(names), probabilities, tokens, verdicts if verdicts is not None else [None] * len(names),
            silences(*times, len(names)), strict=True,
        ):
            exclude = (0, 0) if bad is None else (1, int(bad))
            prior = self._prior(name, exclude)
            rows.append([
                _logit(p), _logit(prior), float(t), t / max(1, len(name)),
                _logit(self._pair_prior(previous, name, prior, exclude)), math.log1p(max(0, self._said(name, own, most))),
                math.log1p(before), math.log1p(after),
            ])
        return np.array(rows)

    def _raw(self, rows: np.ndarray) -> np.ndarray:
        z = (rows - np.asarray(self.mean)) / np.asarray(self.scale)
        z = np.c_[np.ones(len(z)), z]
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(self.weights))))

    def _predict(self, rows: np.ndarray) -> np.ndarray:
        raw = self._raw(rows)
        if not self.calibration_x:
            return raw
        return np.interp(raw, self.calibration_x, self.calibration_y)

    def scores(self, words: Sequence[str], probabilities: Sequence[float], tokens: Sequence[int],
               starts: Sequence[float] = (), ends: Sequence[float] = ()) -> list[float]:
        """P(wrong) of each word of a transcript the scorer did not learn from."""
        if not words:
            return []
        rows = self._rows([normalise(w) for w in words], probabilities, tokens, None, None, (starts, ends))
        return [float(s) for s in self._predict(rows)]

    def learnt_scores(self, sample: CheckedTranscript) -> list[float]:
        """P(wrong) of each word of a transcript the scorer learnt from, each word's own verdict and its
        transcript left out of the counts: the score a new word would get, not one that knows the answer."""
        if not sample.words:
            return []
        rows = self._rows([normalise(w) for w in sample.words], sample.probabilities, sample.tokens, sample.wrong,
                          sample.reference, (sample.starts, sample.ends))
        return [float(s) for s in self._predict(rows)]

    @classmethod
    def fit(cls, samples: Sequence[CheckedTranscript]) -> WordScorer:
        wrong = [bool(w) for s in samples for w in s.wrong]
        corrected: dict[str, list[int]] = {}
        after: dict[str, list[int]] = {}
        said: dict[str, int] = {}
        for s in samples:
            names = [normalise(w) for w in s.words]
            for name, previous, bad in zip(names, _previous_names(names), s.wrong, strict=True):
                for table, key in ((corrected, name), (after, _pair_key(previous, name))):
                    entry = table.setdefault(key, [0, 0])
                    entry[0] += 1
                    entry[1] += bool(bad)
            for piece in set(normalise(s.reference).split()):
                said[piece] = said.get(piece, 0) + 1
        scorer = cls([], [], [], corrected, sum(wrong) / max(1, len(wrong)), after=after, said=said)
        rows = np.concatenate([
            scorer._rows([normalise(w) for w in s.words], s.probabilities, s.tokens, s.wrong, s.reference, (s.starts, s.ends))
            for s in samples if s.words
        ])
        mean, scale = rows.mean(axis=0), rows.std(axis=0) + 1e-9
        z = np.c_[np.ones(len(rows)), (rows - mean) / scale]
        y = np.asarray(wrong, dtype=np.float64)
        weights = np.zeros(z.shape[1])
        for _ in range(50):  # Newton's method on the L2-penalised log-likelihood
            p = 1.0 / (1.0 + np.exp(-(z @ weights)))
            gradient = z.T @ (p - y) / len(y) + L2 * weights
            hessian = (z.T * (p * (1 - p))) @ z / len(y) + L2 * np.eye(len(weights))
            step = np.linalg.solve(hessian, gradient)
            weights -= step
            if np.abs(step).max() < 1e-8:
                break
        scorer.weights, scorer.mean, scorer.scale = weights.tolist(), mean.tolist(), scale.tolist()
        xs, ys = _isotonic_increasing(list(zip(scorer._raw(rows).tolist(), wrong, strict=True)))
        scorer.calibration_x, scorer.calibration_y = list(xs), list(ys)
        return scorer

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "mean": self.mean, "scale": self.scale, "corrected": self.corrected,
                "base_rate": self.base_rate, "calibration_x": self.calibration_x, "calibration_y": self.calibration_y,
                "after": self.after, "said": self.said}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordScorer:
        scorer = cls(list(data["weights"]), list(data["mean"]), list(data["scale"]),
                     {k: list(v) for k, v in data["corrected"].items()}, float(data["base_rate"]),
                     list(data.get("calibration_x") or []), list(data.get("calibration_y") or []),
                     {k: list(v) for k, v in (data.get("after") or {}).items()}, dict(data.get("said") or {}))
        if len(scorer.weights) != 1 + FEATURES:
            raise ValueError(f"a scorer of {len(scorer.weights) - 1} features, this habla-ls has {FEATURES}")
        return scorer


def _isotonic_increasing(points: Sequence[tuple[float, bool]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Pool-adjacent-violators on (score, wrong): the best non-decreasing fit of P(wrong) against the score."""
    blocks: list[list[float]] = []  # [sum of wrong, count, sum of score]
    for score, wrong in sorted(points):
        blocks.append([float(wrong), 1.0, score])
        while len(blocks) > 1 and blocks[-1][0] / blocks[-1][1] < blocks[-2][0] / blocks[-2][1]:
            wrong_sum, count, score_sum = blocks.pop()
            blocks[-1][0] += wrong_sum
            blocks[-1][1] += count
            blocks[-1][2] += score_sum
    return tuple(b[2] / b[1] for b in blocks), tuple(b[0] / b[1] for b in blocks)


def fallback_scores(probabilities: Sequence[float]) -> list[float]:
    """Before a scorer exists: the model's own doubt, marked from 1 - DEFAULT_THRESHOLD."""
    return [1.0 - p for p in probabilities]


# ------------------------------------------------------------------------------------------ marking


@dataclass(frozen=True)
class MarkPoint:
    threshold: float  # a word is marked when its P(wrong) reaches it
    recall: float  # share of wrong words marked
    marked_share: float  # share of all words marked


def mark_point(pairs: Sequence[tuple[float, bool]], threshold: float) -> MarkPoint:
    """Recall and marked share of marking the (score, wrong) pairs whose score reaches ``threshold``."""
    wrong = sum(bad for _, bad in pairs)
    marked = [bad for score, bad in pairs if score >= threshold]
    return MarkPoint(threshold, sum(marked) / wrong if wrong else math.nan, len(marked) / len(pairs) if pairs else math.nan)


def page_threshold(scores: Sequence[float], max_share: float = MAX_MARKED_SHARE, floor: float = MIN_MARKED_P_WRONG) -> float:
    """The P(wrong) from which words are marked, given the scores of the words of the pages to be corrected
    next: the lowest cut marking at most ``max_share`` of them (one word at least), never below ``floor``.
    Needs no verdicts, so it is set on the very pages it marks."""
    values = sorted(scores, reverse=True)
    if not values:
        return max(1.0 - DEFAULT_THRESHOLD, floor)
    allowed = max(1, int(max_share * len(values)))
    cut = values[allowed - 1]
    if allowed < len(values) and values[allowed] == cut:  # a tie across the budget: the next score up, if any
        higher = [v for v in values[:allowed] if v > cut]
        cut = min(higher) if higher else cut  # nothing to tell the top words apart: all of them
    return max(cut, floor)


def choose_threshold(pairs: Sequence[tuple[float, bool]], max_share: float = MAX_MARKED_SHARE) -> MarkPoint:
    """The threshold with the highest recall among those marking at most ``max_share`` of the words."""
    cuts = sorted({round(score, 6) for score, _ in pairs})
    allowed = [p for p in (mark_point(pairs, t) for t in cuts) if p.marked_share <= max_share and not math.isnan(p.recall)]
    if not allowed:
        return MarkPoint(1.0 - DEFAULT_THRESHOLD, math.nan, math.nan)
    return max(allowed, key=lambda p: (p.recall, -p.marked_share))


# ------------------------------------------------------------------------------------------ measuring


@dataclass
class WordCheckFit:
    """What the corrections say: the scorer the page uses, its cut on the corrected words, out-of-fold figures."""

    scorer: WordScorer | None
    threshold: float  # the page's rule on the corrected words themselves (each page sets its own: page_threshold)
    words: int
    wrong: int
    folds_recall: float | None = None  # out of fold: wrong words marked
    folds_marked_share: float | None = None  # out of fold: all words marked
    folds_error: float | None = None  # expected calibration error of P(wrong), out of fold
    reliability: list[tuple[float, float, int]] = field(default_factory=list)  # (mean predicted, observed, words)

    @property
    def calibrated(self) -> bool:
        return self.scorer is not None

    def scores(self, words: Sequence[str], probabilities: Sequence[float], tokens: Sequence[int],
               starts: Sequence[float] = (), ends: Sequence[float] = ()) -> list[float]:
        """P(wrong) of each word of a new transcript (``starts``/``ends``: its words' times, where known)."""
        if self.scorer is None:
            return fallback_scores(probabilities)
        return self.scorer.scores(words, probabilities, tokens, starts, ends)

    def word_scores(self, words: Sequence[TimedWord]) -> list[float]:
        """:meth:`scores` of a transcript's decoded words."""
        return self.scores(*_columns(words))

    def learnt_scores(self, sample: CheckedTranscript) -> list[float]:
        """P(wrong) of each word of a corrected transcript it learnt from (see :meth:`WordScorer.learnt_scores`)."""
        if self.scorer is None:
            return fallback_scores(sample.probabilities)
        return self.scorer.learnt_scores(sample)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scorer": None if self.scorer is None else self.scorer.to_dict(), "threshold": self.threshold,
            "words": self.words, "wrong": self.wrong, "folds_recall": self.folds_recall,
            "folds_marked_share": self.folds_marked_share, "folds_error": self.folds_error,
            "reliability": [list(r) for r in self.reliability],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordCheckFit:
        scorer = WordScorer.from_dict(data["scorer"]) if data.get("scorer") else None
        return cls(scorer, float(data["threshold"]), int(data["words"]), int(data["wrong"]), data.get("folds_recall"),
                   data.get("folds_marked_share"), data.get("folds_error"), [tuple(r) for r in data.get("reliability") or []])


def _pairs(scorer: WordScorer | None, samples: Sequence[CheckedTranscript], *, learnt_from: bool = False) -> list[tuple[float, bool]]:
    """(P(wrong), wrong) of every word; ``learnt_from``: the scorer was fitted on these samples."""
    out = []
    for s in samples:
        if scorer is None:
            scores = fallback_scores(s.probabilities)
        elif learnt_from:
            scores = scorer.learnt_scores(s)
        else:
            scores = scorer.scores(s.words, s.probabilities, s.tokens, s.starts, s.ends)
        out.extend(zip(scores, s.wrong, strict=True))
    return out


def fit_checks(samples: Sequence[CheckedTranscript], folds: int = CALIBRATION_FOLDS) -> WordCheckFit:
    """The scorer from every sample (none below MIN_CALIBRATION_WORDS), with the marks' recall and the
    calibration measured out of fold (tasks in ``folds`` groups), the marks set by the page's rule on the
    held-out words' scores: the corrected tasks stand for the pages that were to be corrected."""
    words = sum(len(s.wrong) for s in samples)
    wrong = sum(sum(s.wrong) for s in samples)
    if words < MIN_CALIBRATION_WORDS:
        return WordCheckFit(None, page_threshold([p for p, _ in _pairs(None, samples)]), words, wrong)
    scorer = WordScorer.fit(samples)
    threshold = page_threshold([p for p, _ in _pairs(scorer, samples, learnt_from=True)])
    ordered = sorted(samples, key=lambda s: s.key)
    held_out: list[tuple[float, bool]] = []
    for fold in range(folds):
        held = ordered[fold::folds]
        rest = [s for i, s in enumerate(ordered) if i % folds != fold]
        held_out.extend(_pairs(WordScorer.fit(rest), held))
    point = mark_point(held_out, page_threshold([p for p, _ in held_out]))
    error, table = calibration_error([p for p, _ in held_out], [bad for _, bad in held_out])
    return WordCheckFit(scorer, threshold, words, wrong, None if math.isnan(point.recall) else point.recall,
                        point.marked_share, error, table)
