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

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from synth.voices import ESPEAK, FAMILIES, KOKORO, family_of

TEST_SET = "test"
REGRESSION_SET = "regression"
# How a report's clips were decoded: each alone (evaluation's way since clips decoded in shared windows were
# found to change with their window-mates), or packed (every report written before; see training/evaluate.py).
DECODED_ALONE = "alone"
DECODED_PACKED = "packed"

DEFAULT_MARGIN = 0.02
DEFAULT_REGRESSION_TOLERANCE = 0.05
DEFAULT_REGRESSION_FLOOR = 0.005
DEFAULT_CONFIDENCE = 0.95
DEFAULT_RESAMPLES = 2000
DEFAULT_MIN_SLICE_WORDS = 100
DEFAULT_SEED = 20250301
MIN_CLUSTERS = 8  # fewer sessions/speakers than this: resample utterances instead
_CELLS_PER_CHUNK = 4_000_000  # resamples x units held in memory at once

ESPEAK_ONLY_NOTE = (
    "Only espeak-ng voices judged standard speech: Kokoro (the `synth` extra) was absent, "
    "so no natural voice was in the regression set."
)


class GateError(ValueError):
    """Two reports cannot be compared (different sets, missing figures); ``needs_evaluation`` says if
    evaluating both versions together would fix it."""

    def __init__(self, message: str, *, needs_evaluation: bool = False) -> None:
        super().__init__(message)
        self.needs_evaluation = needs_evaluation


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


# ---------------------------------------------------------------------------------------------- bootstrap


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


# ---------------------------------------------------------------------------------------------- paired sets


@dataclass
class PairedSet:
    """One evaluation set scored by both versions, utterance by utterance in the same order."""

    name: str
    keys: list[str]
    sessions: np.ndarray
    speakers: np.ndarray
    families: np.ndarray
    loudness: np.ndarray
    errors_current: np.ndarray
    errors_candidate: np.ndarray
    words: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, mask: np.ndarray) -> PairedSet:
        return PairedSet(
            self.name,
            [k for k, keep in zip(self.keys, mask, strict=True) if keep],
            self.sessions[mask],
            self.speakers[mask],
            self.families[mask],
            self.loudness[mask],
            self.errors_current[mask],
            self.errors_candidate[mask],
            self.words[mask],
        )


def _records(report: Mapping[str, Any], name: str, label: str) -> list[Mapping[str, Any]]:
    sets = report.get("sets") or {}
    if name not in sets:
        raise GateError(f"no {name} figures for {label}: run `habla-ls evaluate`", needs_evaluation=True)
    records = sets[name].get("per_utterance")
    if records is None:
        raise GateError(f"the {name} report of {label} keeps no per-utterance records: re-run `habla-ls evaluate`", needs_evaluation=True)
    if records and "reference_words" not in records[0]:
        raise GateError(
            f"the {name} report of {label} predates per-utterance error counts: re-run `habla-ls evaluate`", needs_evaluation=True
        )
    return records


def _errors(record: Mapping[str, Any]) -> int:
    return int(record["substitutions"]) + int(record["deletions"]) + int(record["insertions"])


def _family(record: Mapping[str, Any]) -> str:
    return str(record.get("family") or family_of(str(record.get("speaker") or "")))


def _occurrence_keys(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    # A key may repeat within a set (the same clip listed twice); pair the n-th with the n-th.
    seen: Counter[str] = Counter()
    keys = []
    for r in records:
        key = str(r["key"])
        keys.append((key, seen[key]))
        seen[key] += 1
    return keys


def pair_set(
    name: str, current_report: Mapping[str, Any], candidate_report: Mapping[str, Any], *, current: str = "current", candidate: str = "candidate"
) -> PairedSet:
    """Match the two versions' utterances of set ``name`` by key; :class:`GateError` if they differ."""
    cur_records = _records(current_report, name, current)
    cand_records = _records(candidate_report, name, candidate)
    cur_id = (current_report.get("set_ids") or {}).get(name)
    cand_id = (candidate_report.get("set_ids") or {}).get(name)
    if cur_id and cand_id and cur_id != cand_id:
        which = "test splits" if name == TEST_SET else f"{name} sets"
        raise GateError(
            f"{current} and {candidate} were measured on different {which} ({cur_id} vs {cand_id}): "
            f"re-evaluate both (`habla-ls evaluate {candidate} {current}`)",
            needs_evaluation=True,
        )
    by_key = dict(zip(_occurrence_keys(cand_records), cand_records, strict=True))
    cur_keys = _occurrence_keys(cur_records)
    only_current = [k for k in cur_keys if k not in by_key]
    only_candidate = set(by_key) - set(cur_keys)
    if only_current or only_candidate:
        example = (only_current or sorted(only_candidate))[0][0]
        raise GateError(
            f"{current} and {candidate} scored different {name} clips ({len(only_current)} only in {current}, "
            f"{len(only_candidate)} only in {candidate}, e.g. {example}): re-evaluate both together",
            needs_evaluation=True,
        )
    paired = [(c, by_key[k]) for c, k in zip(cur_records, cur_keys, strict=True)]
    for c, d in paired:
        if int(c["reference_words"]) != int(d["reference_words"]) or c.get("reference") != d.get("reference"):
            raise GateError(
                f"{name} clip {c['key']} has different references in the two reports: re-evaluate both together",
                needs_evaluation=True,
            )
    return PairedSet(
        name,
        [str(c["key"]) for c, _ in paired],
        np.array([str(c.get("session") or "(none)") for c, _ in paired], dtype=object),
        np.array([str(c.get("speaker") or "(none)") for c, _ in paired], dtype=object),
        np.array([_family(c) for c, _ in paired], dtype=object),
        np.array([str(c.get("loudness") or "unknown") for c, _ in paired], dtype=object),
        np.array([_errors(c) for c, _ in paired], dtype=np.float64),
        np.array([_errors(d) for _, d in paired], dtype=np.float64),
        np.array([int(c["reference_words"]) for c, _ in paired], dtype=np.float64),
    )


def single_set(name: str, report: Mapping[str, Any], label: str = "this version") -> PairedSet:
    """One version's set as a "pair" with a perfect reference (zero errors): intervals of its own WER."""
    paired = pair_set(name, report, report, current=label, candidate=label)
    paired.errors_current = np.zeros_like(paired.errors_candidate)
    return paired


# ---------------------------------------------------------------------------------------------- slices


def _voice_or_speaker(speaker: str) -> str:
    return "voice" if family_of(speaker) in FAMILIES else "speaker"


def regression_slices(paired: PairedSet) -> list[tuple[str, np.ndarray]]:
    """(name, mask) of every slice of the regression set: overall, families, voices/speakers, quiet.

    A slice with exactly the members of an earlier one is left out (a set of one family would
    otherwise be judged twice on the same clips).
    """
    everyone = np.ones(len(paired), dtype=bool)
    candidates = [("overall", everyone)]
    candidates += [(f"family {f}", paired.families == f) for f in sorted(set(paired.families))]
    candidates += [(f"{_voice_or_speaker(s)} {s}", paired.speakers == s) for s in sorted(set(paired.speakers))]
    if (paired.loudness == "quiet").any():
        candidates.append(("quiet speech", paired.loudness == "quiet"))
    slices: list[tuple[str, np.ndarray]] = []
    for name, mask in candidates:
        if mask.any() and not any(np.array_equal(mask, kept) for _, kept in slices):
            slices.append((name, mask))
    return slices


def espeak_only(paired_or_records: PairedSet | Sequence[Mapping[str, Any]]) -> bool:
    """True when standard speech was judged by espeak-ng voices and no Kokoro voice."""
    if isinstance(paired_or_records, PairedSet):
        families = set(paired_or_records.families)
    else:
        families = {_family(r) for r in paired_or_records}
    return ESPEAK in families and KOKORO not in families


def report_notes(report: Mapping[str, Any]) -> list[str]:
    """Lines that must head every Markdown report made from ``report`` (a ``reports/<v>.json`` dict)."""
    regression = (report.get("sets") or {}).get(REGRESSION_SET) or {}
    records = regression.get("per_utterance") or []
    return [ESPEAK_ONLY_NOTE] if records and espeak_only(records) else []


# ---------------------------------------------------------------------------------------------- conditions


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


def _interval(paired: PairedSet, cluster_kind: str, clusters: np.ndarray, options: GateOptions) -> Interval:
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
    interval = _interval(test, "session", test.sessions, options)
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
            problems.append(f"improvement not credible: the interval reaches {interval.high:+.3f} (must stay below 0)")
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
        interval = _interval(part, "speaker", part.speakers, options)
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
    margin: float = DEFAULT_MARGIN
    regression_tolerance: float = DEFAULT_REGRESSION_TOLERANCE
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
    base = {"margin": options.margin, "regression_tolerance": options.regression_tolerance, "options": options}
    if current_report is None:
        return GateDecision(candidate, None, True, ["nothing is served yet"], **base)
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
        conditions=conditions, notes=notes, needs_evaluation=needs_evaluation, **base,
    )


# ---------------------------------------------------------------------------------------------- Markdown


def _cell(value: float, signed: bool = False) -> str:
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def slice_table(conditions: Sequence[Condition], current: str, candidate: str) -> list[str]:
    """The slice table of a comparison, as Markdown lines."""
    if not conditions:
        return []
    pct = f"{conditions[0].confidence * 100:g} %"
    lines = [
        f"| slice | clips | words | WER {current} | WER {candidate} | difference | {pct} CI | limit | resampled | verdict |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for c in conditions:
        if not c.decided:
            verdict = "not decided (too small)"
        elif c.kind == "improvement":
            verdict = "credible improvement" if c.passed else "**not credible**" if c.point < c.limit else "**no improvement**"
        else:
            verdict = "ok" if c.passed else "**worse**"
        lines.append(
            f"| {c.name} | {c.clips} | {c.words} | {_cell(c.current_wer)} | {_cell(c.candidate_wer)} | {_cell(c.point, True)} | "
            f"{_cell(c.ci_low, True)}..{_cell(c.ci_high, True)} | {_cell(c.limit, True)} | {c.unit}s ({c.units}) | {verdict} |"
        )
    return lines


def decision_markdown(decision: GateDecision) -> str:
    """A gate decision as a Markdown report (the Kokoro note, when due, is its first line)."""
    lines = [*decision.notes[:1]] if decision.notes and decision.notes[0] == ESPEAK_ONLY_NOTE else []
    if lines:
        lines.append("")
    verdict = "passes" if decision.passed else "refuses"
    lines += [f"# Promotion gate: {decision.candidate} vs {decision.current or 'nothing served'}", "", f"The gate **{verdict}**.", ""]
    lines += [f"- {r}" for r in decision.reasons]
    if decision.conditions:
        lines += ["", *slice_table(decision.conditions, decision.current or "current", decision.candidate)]
    rest = [n for n in decision.notes if n != ESPEAK_ONLY_NOTE]
    o = decision.options
    rest.append(
        f"rule: test improvement beyond {o.margin:.0%} with its interval below 0; a regression slice fails when worse by more "
        f"than max({o.regression_tolerance:.0%} x its WER, {o.regression_floor}) with its interval above 0; slices under "
        f"{o.min_slice_words} words not decided; {o.resamples} resamples, seed {o.seed}"
    )
    lines += ["", *[f"- {n}" for n in rest]]
    return "\n".join(lines) + "\n"


def version_slices(report: Mapping[str, Any], options: GateOptions = GateOptions()) -> list[dict[str, Any]]:
    """One version's WER with its interval on the test split and each regression slice (for its report)."""
    rows = []
    for name in (TEST_SET, REGRESSION_SET):
        try:
            whole = single_set(name, report, str(report.get("version") or "this version"))
        except GateError:
            continue
        if name == TEST_SET:
            parts, kind, clusters = [("overall", np.ones(len(whole), dtype=bool))], "session", "sessions"
        else:
            parts, kind, clusters = regression_slices(whole), "speaker", "speakers"
        for slice_name, mask in parts:
            part = whole.subset(mask)
            if part.words.sum() <= 0:
                continue
            interval = _interval(part, kind, getattr(part, clusters), options)
            rows.append(
                {
                    "slice": f"{name} {slice_name}",
                    "clips": len(part),
                    "words": int(part.words.sum()),
                    "wer": interval.point,
                    "ci_low": interval.low,
                    "ci_high": interval.high,
                    "unit": interval.unit,
                    "units": interval.units,
                }
            )
    return rows


def version_slice_table(report: Mapping[str, Any], options: GateOptions = GateOptions()) -> list[str]:
    rows = version_slices(report, options)
    if not rows:
        return []
    pct = f"{options.confidence * 100:g} %"
    lines = [f"| slice | clips | words | WER | {pct} CI | resampled |", "|---|---:|---:|---:|---|---|"]
    lines += [
        f"| {r['slice']} | {r['clips']} | {r['words']} | {r['wer']:.3f} | {r['ci_low']:.3f}..{r['ci_high']:.3f} | {r['unit']}s ({r['units']}) |"
        for r in rows
    ]
    return lines
