"""The promotion gate on synthetic per-utterance reports: bootstrap, resampling unit, slices, decisions.

Decoding is not the point here, so the reports are written directly in the format of
``reports/<version>.json`` (``tests/test_evaluate.py`` and ``tests/test_promotion.py`` run the real path).
"""

from __future__ import annotations

import numpy as np
import pytest

from synth.voices import family_of
from training.gate import GateOptions, judge
from training.gate_report import decision_markdown, version_slices
from training.paired_sets import ESPEAK_ONLY_NOTE, pair_set
from training.wer_bootstrap import bootstrap_difference

VOICES = ("kokoro:jf_nezumi", "kokoro:jm_kumo", "espeak:es-419", "espeak:es+m3")


def record(key: str, words: int, errors: int, *, session: str = "s", speaker: str = "spk", loudness: str = "normal") -> dict:
    return {
        "key": key,
        "reference": f"reference of {key}",
        "session": session,
        "speaker": speaker,
        "family": family_of(speaker),
        "loudness": loudness,
        "substitutions": errors,
        "deletions": 0,
        "insertions": 0,
        "reference_words": words,
    }


def report(version: str, test: list[dict], regression: list[dict], *, test_id: str = "t1", regression_id: str = "r1") -> dict:
    return {
        "version": version,
        "set_ids": {"test": test_id, "regression": regression_id},
        "sets": {"test": {"per_utterance": test}, "regression": {"per_utterance": regression}},
    }


def make_test_split(errors: list[list[int]], words: int = 10) -> list[dict]:
    """One record per (session, utterance) with ``errors[session][utterance]`` errors of ``words`` words."""
    return [
        record(f"clase_{s:02d}/segment_{u:03d}.wav", words, e, session=f"clase_{s:02d}", speaker="profe")
        for s, row in enumerate(errors)
        for u, e in enumerate(row)
    ]


def regression_set(errors_by_voice: dict[str, list[int]], words: int = 10, quiet_every: int = 0) -> list[dict]:
    return [
        record(
            f"regression/{voice.replace(':', '_')}_{i:03d}.wav", words, e, session=f"regression-{family_of(voice)}", speaker=voice,
            loudness="quiet" if quiet_every and i % quiet_every == 0 else "normal",
        )
        for voice, errors in errors_by_voice.items()
        for i, e in enumerate(errors)
    ]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def _pair(rng: np.random.Generator, sessions: int = 10, per_session: int = 6, before: float = 0.3, after: float = 0.15):
    current = rng.binomial(10, before, size=(sessions, per_session))
    candidate = rng.binomial(10, after, size=(sessions, per_session))
    return make_test_split(current.tolist()), make_test_split(candidate.tolist())


def _regression(rng: np.random.Generator, per_voice: int = 40, wer: float = 0.06) -> dict[str, list[int]]:
    return {v: rng.binomial(10, wer, size=per_voice).tolist() for v in VOICES}


# ---------------------------------------------------------------------------------------------- bootstrap


def test_interval_contains_the_point_estimate_and_shrinks_with_more_data(rng) -> None:
    widths = []
    for n in (40, 640):
        current = rng.binomial(10, 0.30, size=n)
        candidate = rng.binomial(10, 0.25, size=n)
        words = np.full(n, 10)
        interval = bootstrap_difference(current, candidate, words)
        assert interval.point == pytest.approx((candidate.sum() - current.sum()) / words.sum())
        assert interval.low <= interval.point <= interval.high
        widths.append(interval.high - interval.low)
    # 16x the data: the width falls by about 4x (1/sqrt(n)); demand at least 2.5x
    assert widths[1] < widths[0] / 2.5


def test_bootstrap_is_seeded() -> None:
    current, candidate, words = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8], [10] * 8
    first = bootstrap_difference(current, candidate, words, seed=1)
    assert bootstrap_difference(current, candidate, words, seed=1) == first
    assert bootstrap_difference(current, candidate, words, seed=2) != first


def test_two_utterances_by_hand() -> None:
    # a: 0 -> 2 errors of 2 words; b: 1 -> 1 of 2 words. Point: (3 - 1) / 4 = +0.5.
    # Resamples of two utterances: {a,a} = 4/4 - 0/4 = +1 (p 1/4), {a,b} = +0.5 (p 1/2), {b,b} = 0 (p 1/4),
    # so the 2.5 % and 97.5 % quantiles of 2000 draws are exactly 0 and +1.
    interval = bootstrap_difference([0, 1], [2, 1], [2, 2])
    assert interval.point == pytest.approx(0.5)
    assert (interval.low, interval.high) == (0.0, 1.0)
    assert (interval.unit, interval.units) == ("utterance", 2)


def test_a_resample_wer_is_summed_errors_over_summed_words() -> None:
    # 1 word with 1 more error, 9 words unchanged: +1/10 overall (a mean of per-utterance rates would say +0.5)
    interval = bootstrap_difference([0, 0], [1, 0], [1, 9])
    assert interval.point == pytest.approx(0.1)
    # resamples can only be {a,a} = +1, {a,b} = +0.1, {b,b} = 0: the interval spans those values exactly
    assert (interval.low, interval.high) == (0.0, 1.0)


def test_sessions_are_resampled_from_eight_sessions_on_and_utterances_below() -> None:
    # Each session: one utterance 1 error better, one 1 error worse, same words: every session's
    # difference is 0, so resampling sessions gives exactly [0, 0]; resampling utterances does not.
    def split(n_sessions: int):
        sessions = [f"s{i}" for i in range(n_sessions) for _ in range(2)]
        current = [1, 0] * n_sessions
        candidate = [0, 1] * n_sessions
        return current, candidate, [5] * (2 * n_sessions), sessions

    *data, sessions = split(8)
    by_session = bootstrap_difference(*data, sessions, cluster_kind="session")
    assert (by_session.unit, by_session.units) == ("session", 8)
    assert (by_session.point, by_session.low, by_session.high) == (0.0, 0.0, 0.0)
    assert by_session.why == "8 sessions resampled"

    *data, sessions = split(7)
    by_utterance = bootstrap_difference(*data, sessions, cluster_kind="session")
    assert (by_utterance.unit, by_utterance.units) == ("utterance", 14)
    assert by_utterance.low < 0.0 < by_utterance.high
    assert "only 7 sessions (< 8)" in by_utterance.why and "14 utterances resampled" in by_utterance.why

    # the threshold is an option; speakers are the clusters of the regression set
    speakers = [f"voice{i % 4}" for i in range(8)]
    by_speaker = bootstrap_difference([1] * 8, [1] * 8, [5] * 8, speakers, cluster_kind="speaker", min_clusters=4)
    assert (by_speaker.unit, by_speaker.units) == ("speaker", 4)


def test_bootstrap_refuses_what_has_no_words() -> None:
    with pytest.raises(ValueError, match="no reference words"):
        bootstrap_difference([0], [0], [0])
    with pytest.raises(ValueError, match="same length"):
        bootstrap_difference([0, 1], [0], [1, 1])


# ---------------------------------------------------------------------------------------------- decisions


def test_better_on_the_test_split_but_worse_on_one_regression_voice_is_refused_naming_it(rng) -> None:
    test_current, test_candidate = _pair(rng)
    regression_current = _regression(rng)
    regression_candidate = {v: list(e) for v, e in regression_current.items()}
    # jm_kumo only: 7 of its 40 clips get one more error (+0.0175 on that voice, +0.0044 on the whole set)
    regression_candidate["kokoro:jm_kumo"] = [e + (i < 7) for i, e in enumerate(regression_candidate["kokoro:jm_kumo"])]

    decision = judge(
        report("cand", test_candidate, regression_set(regression_candidate)),
        report("cur", test_current, regression_set(regression_current)),
    )
    assert not decision.passed
    failed = {c.name for c in decision.failures}
    assert "regression voice kokoro:jm_kumo" in failed
    # no other voice fails, and the whole-set figure alone would have let it through
    assert failed <= {"regression voice kokoro:jm_kumo", "regression family kokoro"}
    by_name = {c.name: c for c in decision.conditions}
    assert by_name["test"].passed and by_name["regression overall"].passed
    voice = by_name["regression voice kokoro:jm_kumo"]
    assert voice.point == pytest.approx(7 / 400) and voice.ci_low > 0 and voice.point > voice.limit
    assert voice.limit == pytest.approx(max(0.05 * voice.current_wer, 0.005))
    [line] = [r for r in decision.reasons if "jm_kumo" in r]
    assert line.startswith(f"regression voice kokoro:jm_kumo: WER {voice.current_wer:.3f} -> {voice.candidate_wer:.3f} (+0.018, 95 % CI +")
    assert line.endswith(f"worse beyond the limit +{voice.limit:.3f}")


def test_credible_improvement_with_every_slice_fine_is_promoted(rng) -> None:
    test_current, test_candidate = _pair(rng)
    regression = regression_set(_regression(rng), quiet_every=3)
    decision = judge(report("cand", test_candidate, regression), report("cur", test_current, regression))
    assert decision.passed, decision.reasons
    test = decision.conditions[0]
    assert test.name == "test" and test.ci_high < 0 and test.point < test.limit
    assert (test.unit, test.units) == ("session", 10)
    names = [c.name for c in decision.conditions]
    assert names[1:4] == ["regression overall", "regression family espeak", "regression family kokoro"]
    assert {f"regression voice {v}" for v in VOICES} <= set(names) and "regression quiet speech" in names
    # 4 voices < 8: the regression set resamples utterances, and the decision says so
    assert any(n.startswith("regression overall: only 4 speakers (< 8)") for n in decision.notes)
    assert decision.candidate_wer < decision.current_wer
    assert decision.reasons[-1].startswith("regression: all ")


def test_an_improvement_whose_interval_straddles_zero_is_not_credible() -> None:
    # 3 sessions of 4 clips (10 words each): 24 -> 22 errors, -0.017, beyond the 2 % margin (-0.004)
    current = make_test_split([[2, 2, 2, 2], [2, 2, 2, 2], [2, 2, 2, 2]])
    candidate = make_test_split([[0, 4, 0, 4], [0, 4, 1, 3], [0, 2, 2, 2]])
    regression = regression_set({"kokoro:jm_kumo": [1] * 20, "espeak:es-419": [1] * 20})
    decision = judge(report("cand", candidate, regression), report("cur", current, regression))
    assert not decision.passed
    [failure] = decision.failures
    assert failure.name == "test" and failure.point < failure.limit and failure.ci_high > 0
    assert failure.unit == "utterance" and "only 3 sessions" in failure.unit_note
    assert "improvement not credible" in decision.reasons[0] and "not better by" not in decision.reasons[0]
    assert "the test split is small" not in decision.reasons[0]  # 120 words: not the reason


def test_a_gain_on_a_tiny_test_split_says_that_more_corrections_decide_it() -> None:
    # A first round's split: 3 clips of 9 words, 15 -> 12 errors; the interval cannot stay below 0.
    current, candidate = make_test_split([[5, 5, 5]], words=9), make_test_split([[1, 5, 6]], words=9)
    regression = regression_set({"kokoro:jm_kumo": [1] * 20, "espeak:es-419": [1] * 20})
    decision = judge(report("cand", candidate, regression), report("cur", current, regression))
    assert not decision.passed
    assert "improvement not credible" in decision.reasons[0]
    assert "the test split is small (3 clips, 27 words): more corrections" in decision.reasons[0]


def test_no_improvement_beyond_the_margin_is_refused() -> None:
    current = make_test_split([[5] * 10 for _ in range(10)])
    candidate = make_test_split([[5] * 10 for _ in range(9)] + [[5] * 9 + [4]])  # 500 -> 499 errors of 1000 words
    regression = regression_set({"kokoro:jm_kumo": [1] * 20})
    decision = judge(report("cand", candidate, regression), report("cur", current, regression))
    assert not decision.passed
    assert "not better by the 2% margin (needs below -0.010)" in decision.reasons[0]


def test_worse_than_the_limit_but_not_credibly_worse_passes(rng) -> None:
    test_current, test_candidate = _pair(rng)
    current = {"espeak:es-419": [1] * 200}
    candidate = {"espeak:es-419": [1] * 199 + [3]}  # +2 errors of 2000 words: +0.001, within the 0.005 floor
    decision = judge(report("c", test_candidate, regression_set(candidate)), report("r", test_current, regression_set(current)))
    assert decision.passed
    # one clip much worse on a small voice: beyond the limit, but its interval includes 0
    current = {"kokoro:jm_kumo": [1] * 200, "kokoro:jf_nezumi": [0] * 12}
    candidate = {"kokoro:jm_kumo": [1] * 200, "kokoro:jf_nezumi": [0] * 11 + [4]}
    decision = judge(
        report("c", test_candidate, regression_set(candidate)), report("r", test_current, regression_set(current)),
        GateOptions(min_slice_words=50),
    )
    voice = {c.name: c for c in decision.conditions}["regression voice kokoro:jf_nezumi"]
    assert voice.decided and voice.passed and voice.point > voice.limit and voice.ci_low <= 0
    assert "not credibly" in voice.verdict


def test_too_small_slices_are_reported_not_decided(rng) -> None:
    test_current, test_candidate = _pair(rng)
    current = _regression(rng)
    candidate = {v: list(e) for v, e in current.items()}
    current["ana"], candidate["ana"] = [0] * 5, [1] * 5  # a user's recorded speaker: 50 words, +0.1
    decision = judge(report("c", test_candidate, regression_set(candidate)), report("r", test_current, regression_set(current)))
    small = {c.name: c for c in decision.conditions}["regression family recorded"]
    assert not small.decided and small.passed and small.ci_low > 0
    assert "too small to judge (50 reference words < 100)" in small.verdict
    # the family of one speaker is that speaker: it is not listed twice
    assert "regression speaker ana" not in {c.name for c in decision.conditions}
    assert decision.passed, decision.reasons


def test_reports_from_different_sets_or_clips_are_not_compared(rng) -> None:
    test_current, test_candidate = _pair(rng)
    regression = regression_set(_regression(rng))
    other_split = judge(report("c", test_candidate, regression, test_id="t2"), report("r", test_current, regression))
    assert not other_split.passed and other_split.needs_evaluation
    assert "different test splits (t1 vs t2)" in other_split.reasons[0]
    assert not [c for c in other_split.conditions if c.kind == "improvement"]

    fewer = judge(report("c", test_candidate[:-1], regression), report("r", test_current, regression))
    assert not fewer.passed and "scored different test clips (1 only in r, 0 only in c" in fewer.reasons[0]

    no_regression = report("c", test_candidate, regression)
    del no_regression["sets"]["regression"]
    missing = judge(no_regression, report("r", test_current, regression))
    assert not missing.passed and "no regression figures for c" in missing.reasons[0]

    stale = judge(report("c", test_candidate, regression), report("r", test_current, regression), expected_set_ids={"regression": "r9"})
    assert not stale.passed and stale.needs_evaluation and "another regression set" in stale.reasons[0]

    old = report("c", test_candidate, regression)
    for r in old["sets"]["test"]["per_utterance"]:
        del r["reference_words"]
    assert "predates per-utterance error counts" in judge(old, report("r", test_current, regression)).reasons[0]


def test_reports_decoded_differently_are_not_compared(rng) -> None:
    test_current, test_candidate = _pair(rng)
    regression = regression_set(_regression(rng))
    alone = {**report("c", test_candidate, regression), "decoding": "alone"}
    # a report without the field was written when evaluation packed clips into shared windows
    mixed = judge(alone, report("r", test_current, regression))
    assert not mixed.passed and mixed.needs_evaluation and not mixed.conditions
    assert mixed.reasons == ["r was scored with clips decoded packed and c alone: re-evaluate both (`habla-ls evaluate c r`)"]
    both_alone = judge(alone, {**report("r", test_current, regression), "decoding": "alone"})
    assert both_alone.passed and not both_alone.needs_evaluation, both_alone.reasons


def test_pairing_is_by_key_not_by_order(rng) -> None:
    current, candidate = _pair(rng)
    shuffled = [candidate[i] for i in rng.permutation(len(candidate))]
    paired = pair_set("test", report("r", current, []), report("c", shuffled, []))
    assert paired.keys == [r["key"] for r in current]
    assert paired.errors_candidate.tolist() == [r["substitutions"] for r in candidate]


def test_nothing_served_passes() -> None:
    decision = judge(report("c", [], []), None)
    assert decision.passed and decision.reasons == ["nothing is served yet"]


def test_espeak_only_regression_set_heads_every_report(rng) -> None:
    test_current, test_candidate = _pair(rng)
    espeak = regression_set({"espeak:es-419": [1] * 20, "espeak:es+m3": [1] * 20})
    decision = judge(report("c", test_candidate, espeak), report("r", test_current, espeak))
    assert decision.notes[0] == ESPEAK_ONLY_NOTE
    assert decision_markdown(decision).splitlines()[0] == ESPEAK_ONLY_NOTE
    mixed = regression_set({"espeak:es-419": [1] * 20, "kokoro:jm_kumo": [1] * 20})
    decision = judge(report("c", test_candidate, mixed), report("r", test_current, mixed))
    assert ESPEAK_ONLY_NOTE not in decision.notes
    assert decision_markdown(decision).startswith("# Promotion gate: c vs r")


def test_decision_markdown_has_the_slice_table_and_conditions_are_machine_readable(rng) -> None:
    test_current, test_candidate = _pair(rng)
    regression = regression_set(_regression(rng))
    decision = judge(report("c", test_candidate, regression), report("r", test_current, regression))
    text = decision_markdown(decision)
    assert "| slice | clips | words | WER r | WER c | difference | 95 % CI | limit | resampled | verdict |" in text
    assert "| regression voice kokoro:jm_kumo | 40 | 400 |" in text
    data = decision.to_dict()
    first = data["conditions"][0]
    assert {"name", "passed", "point", "ci_low", "ci_high", "limit", "decided"} <= set(first)
    assert data["failures"] == []


def test_version_slices_give_each_slice_its_wer_and_interval(rng) -> None:
    test, _ = _pair(rng)
    regression = regression_set(_regression(rng), quiet_every=4)
    rows = {r["slice"]: r for r in version_slices(report("v", test, regression))}
    overall = rows["test overall"]
    words = sum(r["reference_words"] for r in test)
    assert overall["wer"] == pytest.approx(sum(r["substitutions"] for r in test) / words)
    assert overall["ci_low"] <= overall["wer"] <= overall["ci_high"] and overall["unit"] == "session"
    assert "regression quiet speech" in rows and rows["regression voice espeak:es+m3"]["clips"] == 40
