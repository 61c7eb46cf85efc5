"""Which segments should a human correct next?

A correction teaches the model most where the model is wrong, and costs the human roughly the audio's
length. So a segment's usefulness is the expected number of word errors per second of audio:

    error rate  = w * (1 - confidence) + (1 - w) * disagreement
    usefulness  = error rate * words per second

``confidence`` is the served model's own (in [0, 1]); ``disagreement`` is the WER between the served
model's transcript and a reference model's (its parent, or the base model) — where two versions disagree,
at least one is wrong. Without a reference model the error rate is the uncertainty alone.

Three strategies (:data:`STRATEGIES`) order the same candidates:

- ``uncertainty`` (:func:`rank`): usefulness, with a diversity rule that keeps one session or speaker from
  taking the whole budget (each segment already picked from the same session or speaker multiplies the
  next one's usefulness by ``repeat_decay``);
- ``diverse`` (:func:`rank_diverse`): usefulness times the distance, in the served model's own encoder
  space, to the nearest segment already corrected or picked (an uncertainty-weighted k-centre greedy):
  ten near-copies of one doubtful sentence are worth one correction, not ten;
- ``random`` (:func:`rank_random`): a seeded shuffle, the baseline the others are measured against.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import jiwer
import numpy as np

# Speech runs at 2-3 words/s; clamping keeps a hallucinated or truncated transcript from scoring 0 or huge.
MIN_WORDS_PER_SECOND = 1.0
MAX_WORDS_PER_SECOND = 4.0
# An empty transcript says nothing about how many words were spoken. Habla's segments are cut by voice
# activity, so an empty one is most likely speech the model missed entirely (quiet students, in practice):
# count it at a typical speaking rate, so that a confident-silence miss ranks with the worst clips.
TYPICAL_WORDS_PER_SECOND = 2.5

UNCERTAINTY, DIVERSE, RANDOM = "uncertainty", "diverse", "random"
STRATEGIES = (UNCERTAINTY, DIVERSE, RANDOM)
# Greedy diversity costs one pass over the candidates per pick; past this many picks the rest are ordered
# by usefulness times their distance at that point (a round corrects tens, not thousands).
DIVERSE_PICKS = 500


@dataclass(frozen=True)
class Candidate:
    key: str
    task_id: int
    session: str
    speaker: str
    duration: float
    text: str
    confidence: float
    reference_text: str | None = None  # the reference model's transcript, when there is one


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    usefulness: float
    disagreement: float | None
    priority: int  # 1 = correct this first


def disagreement(text: str, reference_text: str) -> float:
    """WER between two transcripts of the same audio, case and punctuation ignored, capped at 1."""
    a, b = _words(text), _words(reference_text)
    if not a and not b:
        return 0.0
    if not a or not b:
        return 1.0
    return min(1.0, jiwer.wer(" ".join(b), " ".join(a)))


def usefulness(candidate: Candidate, *, uncertainty_weight: float = 0.5) -> tuple[float, float | None]:
    """(expected word errors per second of audio, disagreement or None)."""
    uncertainty = 1.0 - min(1.0, max(0.0, candidate.confidence))
    if candidate.reference_text is None:
        dis, rate = None, uncertainty
    else:
        dis = disagreement(candidate.text, candidate.reference_text)
        rate = uncertainty_weight * uncertainty + (1.0 - uncertainty_weight) * dis
    return rate * _words_per_second(candidate), dis


def _words_per_second(candidate: Candidate) -> float:
    words = len(_words(candidate.text)) or len(_words(candidate.reference_text or ""))
    if not words:
        return TYPICAL_WORDS_PER_SECOND
    rate = words / max(candidate.duration, 0.1)
    return min(MAX_WORDS_PER_SECOND, max(MIN_WORDS_PER_SECOND, rate))


def rank(
    candidates: Iterable[Candidate],
    *,
    uncertainty_weight: float = 0.5,
    repeat_decay: float = 0.7,
) -> list[Ranked]:
    """Every candidate in the order a human should correct them (greedy, with the diversity rule)."""
    scored = []
    for c in candidates:
        value, dis = usefulness(c, uncertainty_weight=uncertainty_weight)
        scored.append((c, value, dis))

    picked_sessions: Counter[str] = Counter()
    picked_speakers: Counter[str] = Counter()

    def effective(item: tuple[Candidate, float, float | None]) -> float:
        c, value, _ = item
        return value * repeat_decay ** (picked_sessions[c.session] + picked_speakers[c.speaker])

    # Lazy greedy: a candidate's effective value only falls as others are picked, so a stale heap entry
    # is re-scored and pushed back instead of re-scoring everything at every step.
    heap = [(-value, i, 0) for i, (_, value, _) in enumerate(scored)]
    heapq.heapify(heap)
    ranked: list[Ranked] = []
    while heap:
        _, i, seen = heapq.heappop(heap)
        c, value, dis = scored[i]
        stamp = picked_sessions[c.session] + picked_speakers[c.speaker]
        if seen != stamp:
            heapq.heappush(heap, (-effective(scored[i]), i, stamp))
            continue
        ranked.append(Ranked(c, value, dis, priority=len(ranked) + 1))
        picked_sessions[c.session] += 1
        picked_speakers[c.speaker] += 1
    return ranked


def rank_random(candidates: Iterable[Candidate], *, seed: int = 0) -> list[Ranked]:
    """A seeded shuffle (the same candidates and seed give the same order); usefulness is still reported."""
    ordered = sorted(candidates, key=lambda c: c.key)
    random.Random(seed).shuffle(ordered)
    out = []
    for c in ordered:
        value, dis = usefulness(c)
        out.append(Ranked(c, value, dis, priority=len(out) + 1))
    return out


def rank_diverse(
    candidates: Iterable[Candidate],
    vectors: Mapping[str, np.ndarray],
    covered: Sequence[np.ndarray] = (),
    *,
    uncertainty_weight: float = 0.5,
    picks: int = DIVERSE_PICKS,
) -> list[Ranked]:
    """Greedy: the next segment maximises usefulness x (cosine distance to the nearest segment already
    corrected (``covered``) or picked), in the encoder space of ``vectors`` (candidate key -> vector).

    Vectors are centred on the mean of all of them first: mean-pooled encoder states share a large common
    part that would make every distance tiny. A candidate without a vector counts as far from everything.
    """
    items = list(candidates)
    values = []
    for c in items:
        value, dis = usefulness(c, uncertainty_weight=uncertainty_weight)
        values.append((value, dis))
    if not items:
        return []
    have = [i for i, c in enumerate(items) if c.key in vectors]
    every = [np.asarray(vectors[items[i].key], dtype=np.float32) for i in have] + [np.asarray(v, dtype=np.float32) for v in covered]
    gap = np.full(len(items), 2.0, dtype=np.float64)  # the largest cosine distance
    unit = np.zeros((len(items), every[0].shape[0] if every else 1), dtype=np.float32)
    if every:
        centre = np.mean(every, axis=0)

        def normalise(matrix: np.ndarray) -> np.ndarray:
            centred = matrix - centre
            return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-8)

        unit[have] = normalise(np.stack(every[: len(have)]))
        if covered:
            seen = normalise(np.stack(every[len(have):]))
            gap[have] = np.minimum(gap[have], (1.0 - unit[have] @ seen.T).min(axis=1))
    has_vector = np.zeros(len(items), dtype=bool)
    has_vector[have] = True
    worth = np.array([value for value, _ in values], dtype=np.float64)
    left = np.ones(len(items), dtype=bool)
    order: list[int] = []
    for _ in range(min(picks, len(items))):
        score = np.where(left, worth * np.maximum(gap, 0.0), -np.inf)
        best = int(np.argmax(score))
        order.append(best)
        left[best] = False
        if has_vector[best]:
            gap[has_vector] = np.minimum(gap[has_vector], 1.0 - unit[has_vector] @ unit[best])
    rest = sorted(np.flatnonzero(left), key=lambda i: (-worth[i] * max(gap[i], 0.0), items[i].key))
    return [
        Ranked(items[i], values[i][0], values[i][1], priority=position)
        for position, i in enumerate([*order, *rest], start=1)
    ]


def top(ranked: Sequence[Ranked], budget: int | None) -> list[Ranked]:
    return list(ranked if budget is None else ranked[: max(0, budget)])


def _words(text: str) -> list[str]:
    return jiwer.RemovePunctuation()(text.lower()).split()
