"""The paired, cluster-resampled bootstrap of a WER difference: candidate − current on the same utterances.

A resample draws *clusters* with replacement (sessions, speakers), because utterances of one session
or one voice share their errors; with fewer than :data:`MIN_CLUSTERS` clusters it draws utterances
instead and says so (an interval over 3 sessions would be an artefact). The WER of a resample is the sum
of its errors over the sum of its reference words, never a mean of per-utterance WERs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 20250301
MIN_CLUSTERS = 8  # fewer sessions/speakers than this: resample utterances instead
_CELLS_PER_CHUNK = 4_000_000  # resamples x units held in memory at once


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval, with the unit that was resampled and why."""

    point: float
    low: float
    high: float
    unit: str  # "session", "speaker" or "utterance"
    units: int
    why: str


def bootstrap_difference(
    errors_current: Sequence[float] | np.ndarray,
    errors_candidate: Sequence[float] | np.ndarray,
    words: Sequence[float] | np.ndarray,
    clusters: Sequence[str] | np.ndarray | None = None,
    *,
    cluster_kind: str = "session",
    confidence: float = DEFAULT_CONFIDENCE,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    min_clusters: int = MIN_CLUSTERS,
) -> Interval:
    """Paired bootstrap of WER(candidate) − WER(current) over the same utterances.

    Each resample draws units (clusters when there are at least ``min_clusters`` of them, else
    utterances) with replacement, and its WERs are summed errors over summed reference words of the
    drawn units. Drawing a multinomial count per unit is the same as drawing units, and lets one
    matrix product score a block of resamples at once.
    """
    cur = np.asarray(errors_current, dtype=np.float64)
    cand = np.asarray(errors_candidate, dtype=np.float64)
    ref = np.asarray(words, dtype=np.float64)
    if not (cur.shape == cand.shape == ref.shape) or cur.ndim != 1:
        raise ValueError("errors and words must be 1-D arrays of the same length")
    if ref.sum() <= 0:
        raise ValueError("no reference words to compute a WER on")
    point = float((cand.sum() - cur.sum()) / ref.sum())

    diff, unit, why = cand - cur, "utterance", f"{len(ref)} utterances resampled"
    if clusters is not None:
        labels, index = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
        if len(labels) >= min_clusters:
            diff = np.bincount(index, weights=diff, minlength=len(labels))
            ref = np.bincount(index, weights=ref, minlength=len(labels))
            unit, why = cluster_kind, f"{len(labels)} {cluster_kind}s resampled"
        else:
            plural = "s" if len(labels) != 1 else ""
            why = f"only {len(labels)} {cluster_kind}{plural} (< {min_clusters}): {len(ref)} utterances resampled instead"

    k = len(ref)
    rng = np.random.default_rng(seed)
    pvals = np.full(k, 1.0 / k)
    values = np.empty(resamples)
    step = max(1, _CELLS_PER_CHUNK // k)
    for start in range(0, resamples, step):
        n = min(step, resamples - start)
        counts = rng.multinomial(k, pvals, size=n).astype(np.float64)
        numerator, denominator = counts @ diff, counts @ ref
        values[start : start + n] = np.divide(numerator, denominator, out=np.full(n, np.nan), where=denominator > 0)
    values = values[~np.isnan(values)]
    if values.size == 0:
        low = high = point
    else:
        tail = (1.0 - confidence) / 2.0
        low, high = (float(v) for v in np.quantile(values, [tail, 1.0 - tail]))
    return Interval(point, low, high, unit, k, why)
