"""The promotion gate: a paired, cluster-bootstrapped comparison of a candidate with the served version.

Both versions must have been scored on the same utterances (``habla-ls evaluate`` keeps every utterance
in ``reports/<version>.json`` with its normalised-level error counts); they are matched by utterance
key, and the gate refuses to compare reports measured on different sets.

For every figure the gate uses the difference of WERs, candidate − current, on the same utterances,
and a percentile bootstrap interval of it (default 2000 resamples, 95 %, seeded). A resample draws
*clusters* with replacement — sessions for the test split, speakers for the regression set — because
utterances of one session or one voice share their errors; when a set or slice has fewer than
:data:`MIN_CLUSTERS` clusters the interval resamples utterances instead, and the report says so (an
interval over 3 sessions would be an artefact). The WER of a resample is the sum of its errors over the
sum of its reference words, never a mean of per-utterance WERs.

The rule (defaults in brackets):

1. **Test split: a credible improvement.** The point estimate of candidate − current test WER must be
   below −margin × current WER [margin 2 %], *and* the upper bound of its interval must be below zero.
   An improvement whose interval reaches zero is noise, however large it looks.
2. **Regression set: no slice worse beyond its limit.** The slices are the whole set, each voice
   family (``kokoro``, ``espeak``, ``recorded``), each speaker/voice and quiet speech. A slice fails when
   its worsening is both *large* — the point estimate exceeds max(tolerance × current slice WER, floor)
   [tolerance 5 %, floor 0.005 absolute] — and *real* — the lower bound of its interval is above
   zero. The floor keeps a relative limit on a WER of 0.06 from being decided by a couple of words; the
   interval keeps one unlucky clip from blocking a good model. Sub-slices with fewer than
   ``min_slice_words`` reference words [100] are reported but not decided (the whole set always is).

A slice of a handful of words has a wide interval, so a single voice cannot prove itself worse with
few clips; the whole-set and family slices pool them. Checking ~10 slices at 95 % two-sided means
about a 2.5 % chance per slice of calling noise "worse" only when the point estimate also exceeds the
limit, which keeps false refusals rare without letting a forgetful model through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from training.paired_sets import (
    DECODED_PACKED,
    ESPEAK_ONLY_NOTE,
    REGRESSION_SET,
    TEST_SET,
    GateError,
    PairedSet,
    espeak_only,
    pair_set,
    regression_slices,
)
from training.wer_bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    MIN_CLUSTERS,
    Interval,
    bootstrap_difference,
)

DEFAULT_MARGIN = 0.02
DEFAULT_REGRESSION_TOLERANCE = 0.05
DEFAULT_REGRESSION_FLOOR = 0.005
DEFAULT_MIN_SLICE_WORDS = 100


@dataclass(frozen=True)
class GateOptions:
    margin: float = DEFAULT_MARGIN
    regression_tolerance: float = DEFAULT_REGRESSION_TOLERANCE
    regression_floor: float = DEFAULT_REGRESSION_FLOOR
    confidence: float = DEFAULT_CONFIDENCE
    min_slice_words: int = DEFAULT_MIN_SLICE_WORDS
    resamples: int = DEFAULT_RESAMPLES
    seed: int = DEFAULT_SEED
    min_clusters: int = MIN_CLUSTERS

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must lie between 0 and 1, got {self.confidence}")
        if self.resamples < 1:
            raise ValueError(f"resamples must be positive, got {self.resamples}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Condition:
    """One checked condition of the gate, machine-readable; :meth:`line` is its one-line verdict."""

    name: str
    kind: str  # "improvement" (test split) or "regression" (a regression slice)
    passed: bool
    decided: bool
    point: float
    ci_low: float
    ci_high: float
    limit: float
    current_wer: float
    candidate_wer: float
    clips: int
    words: int
    unit: str
    units: int
    unit_note: str
    verdict: str
    confidence: float = DEFAULT_CONFIDENCE

    def line(self) -> str:
        return (
            f"{self.name}: WER {self.current_wer:.3f} -> {self.candidate_wer:.3f} "
            f"({self.point:+.3f}, {self.confidence * 100:g} % CI {self.ci_low:+.3f}..{self.ci_high:+.3f}) {self.verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def slice_interval(paired: PairedSet, cluster_kind: str, clusters: np.ndarray, options: GateOptions) -> Interval:
    """The bootstrap interval of ``paired``'s WER difference, resampling ``clusters`` as ``options`` say."""
    return bootstrap_difference(
        paired.errors_current,
        paired.errors_candidate,
        paired.words,
        clusters,
        cluster_kind=cluster_kind,
        confidence=options.confidence,
        resamples=options.resamples,
        seed=options.seed,
        min_clusters=options.min_clusters,
    )


def _wers(paired: PairedSet) -> tuple[float, float]:
    words = paired.words.sum()
    return float(paired.errors_current.sum() / words), float(paired.errors_candidate.sum() / words)


def improvement_condition(test: PairedSet, options: GateOptions) -> Condition:
    """Condition 1: the test-split WER falls by more than the margin, and credibly (interval below 0)."""
    if test.words.sum() <= 0:
        raise GateError("the test split has no reference words: nothing to judge the candidate on")
    interval = slice_interval(test, "session", test.sessions, options)
    current_wer, candidate_wer = _wers(test)
    limit = -options.margin * current_wer
    beats_margin, credible = interval.point < limit, interval.high < 0.0
    if beats_margin and credible:
        verdict = f"credibly better, beyond the {options.margin:.0%} margin ({limit:+.3f})"
    else:
        problems = []
        if not beats_margin:
            problems.append(f"not better by the {options.margin:.0%} margin (needs below {limit:+.3f})")
        if not credible:
            problem = f"improvement not credible: the interval reaches {interval.high:+.3f} (must stay below 0)"
            words = int(test.words.sum())
            if beats_margin and words < options.min_slice_words:
                # What the teacher can do about it: the split grows with the corrections.
                problem += (f"; the test split is small ({len(test)} clips, {words} words): more corrections "
                            "make it large enough to show a real gain")
            problems.append(problem)
        verdict = "; ".join(problems)
    return Condition(
        f"{test.name}", "improvement", beats_margin and credible, True, interval.point, interval.low, interval.high,
        limit, current_wer, candidate_wer, len(test), int(test.words.sum()), interval.unit, interval.units, interval.why, verdict,
        options.confidence,
    )


def regression_conditions(regression: PairedSet, options: GateOptions) -> list[Condition]:
    """Condition 2, one per slice: fail when worse beyond max(tolerance x WER, floor) and credibly worse."""
    conditions = []
    for name, mask in regression_slices(regression):
        part = regression.subset(mask)
        words = int(part.words.sum())
        if words <= 0:
            continue
        interval = slice_interval(part, "speaker", part.speakers, options)
        current_wer, candidate_wer = _wers(part)
        limit = max(options.regression_tolerance * current_wer, options.regression_floor)
        decided = name == "overall" or words >= options.min_slice_words
        worse = interval.point > limit and interval.low > 0.0
        if not decided:
            verdict = f"too small to judge ({words} reference words < {options.min_slice_words}): reported, not decided"
        elif worse:
            verdict = f"worse beyond the limit {limit:+.3f}"
        elif interval.point > limit:
            verdict = f"worse than the limit {limit:+.3f} but not credibly (the interval includes 0)"
        else:
            verdict = f"within the limit {limit:+.3f}"
        conditions.append(
            Condition(
                f"{regression.name} {name}", "regression", not (decided and worse), decided, interval.point, interval.low,
                interval.high, limit, current_wer, candidate_wer, len(part), words, interval.unit, interval.units, interval.why, verdict,
                options.confidence,
            )
        )
    return conditions


# ---------------------------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class GateDecision:
    """The gate's answer. ``reasons`` are one line each: every failed condition (or why it passed)."""

    candidate: str
    current: str | None
    passed: bool
    reasons: list[str] = field(default_factory=list)
    candidate_wer: float | None = None
    current_wer: float | None = None
    candidate_regression_wer: float | None = None
    current_regression_wer: float | None = None
    conditions: list[Condition] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    needs_evaluation: bool = False
    options: GateOptions = field(default_factory=GateOptions)

    @property
    def failures(self) -> list[Condition]:
        return [c for c in self.conditions if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failures"] = [c.name for c in self.failures]
        return data


def judge(
    candidate_report: Mapping[str, Any],
    current_report: Mapping[str, Any] | None,
    options: GateOptions = GateOptions(),
    *,
    candidate: str | None = None,
    current: str | None = None,
    expected_set_ids: Mapping[str, str] | None = None,
) -> GateDecision:
    """Decide from two ``reports/<version>.json`` dicts (``current_report`` None: nothing is served).

    ``expected_set_ids`` (set name -> id) makes the gate insist on particular sets, e.g. the regression
    manifest a user named: reports measured on another set are refused as stale.
    """
    candidate = candidate or str(candidate_report.get("version") or "candidate")
    if current_report is None:
        return GateDecision(candidate, None, True, ["nothing is served yet"], options=options)
    current = current or str(current_report.get("version") or "current")

    reasons: list[str] = []
    conditions: list[Condition] = []
    notes: list[str] = []
    needs_evaluation = False
    figures: dict[str, tuple[float, float]] = {}
    decodings = {label: report.get("decoding", DECODED_PACKED) for label, report in ((current, current_report), (candidate, candidate_report))}
    mixed_decodings = len(set(decodings.values())) > 1
    if mixed_decodings:  # the figures do not compare: judge nothing until both are re-scored
        reasons.append(
            f"{current} was scored with clips decoded {decodings[current]} and {candidate} {decodings[candidate]}: "
            f"re-evaluate both (`habla-ls evaluate {candidate} {current}`)"
        )
        needs_evaluation = True
    for name in () if mixed_decodings else (TEST_SET, REGRESSION_SET):
        try:
            wanted = (expected_set_ids or {}).get(name)
            for label, report in ((current, current_report), (candidate, candidate_report)):
                got = (report.get("set_ids") or {}).get(name)
                if wanted and got and got != wanted:
                    raise GateError(f"{label} was measured on another {name} set than the one named ({got} vs {wanted})", needs_evaluation=True)
            paired = pair_set(name, current_report, candidate_report, current=current, candidate=candidate)
            if name == TEST_SET:
                found = [improvement_condition(paired, options)]
            else:
                found = regression_conditions(paired, options)
                if espeak_only(paired):
                    notes.insert(0, ESPEAK_ONLY_NOTE)
            figures[name] = _wers(paired)
        except GateError as exc:
            reasons.append(str(exc))
            needs_evaluation = needs_evaluation or exc.needs_evaluation
            continue
        conditions += found
        notes += [f"{c.name}: {c.unit_note}" for c in found if c.name in (TEST_SET, f"{REGRESSION_SET} overall")]

    failures = [c for c in conditions if not c.passed]
    passed = not reasons and not failures
    reasons += [c.line() for c in failures]
    if passed:
        judged = [c for c in conditions if c.kind == "regression" and c.decided]
        reasons = [c.line() for c in conditions if c.kind == "improvement"]
        reasons.append(f"regression: all {len(judged)} judged slices within their limits")
    test, regression = figures.get(TEST_SET), figures.get(REGRESSION_SET)
    return GateDecision(
        candidate, current, passed, reasons,
        candidate_wer=test[1] if test else None, current_wer=test[0] if test else None,
        candidate_regression_wer=regression[1] if regression else None,
        current_regression_wer=regression[0] if regression else None,
        conditions=conditions, notes=notes, needs_evaluation=needs_evaluation, options=options,
    )


