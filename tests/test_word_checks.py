"""Marking the words to check and estimating how many are wrong, learnt from corrections."""

from __future__ import annotations

import random

import pytest

from training.calibration import calibration_error
from training.word_checks import (
    MIN_CALIBRATION_WORDS,
    CheckedTranscript,
    WordCheckFit,
    choose_threshold,
    fit_checks,
    mark_point,
    page_threshold,
    wrong_words,
)


def test_wrong_words_are_those_the_human_substituted_removed_or_missed_beside():
    words = ["Hoy", "vamos", "a", "estudiar", "los", "verbos", "y", "regulares."]
    # "y regulares" -> "irregulares": one substitution and one word the human removed.
    assert wrong_words(words, "Hoy vamos a estudiar los verbos irregulares.") == [False] * 6 + [True, True]
    # Case and punctuation are not corrections.
    assert wrong_words(["¿Quién", "ha", "terminado?"], "quién ha terminado") == [False, False, False]
    # A word the model missed is blamed on the word before the gap.
    assert wrong_words(["Abrid", "libro"], "Abrid el libro") == [True, False]
    assert wrong_words([], "algo") == []


def _classroom(seed: int, tasks: int, *, accent: float = 0.15, slips: float = 0.12) -> list[CheckedTranscript]:
    """Tasks where an accent makes the model sure of some wrong words ("lo" for "los", a share ``accent`` of
    the words) and unsure of others (``slips``)."""
    rng = random.Random(seed)
    vocabulary = ["hoy", "vamos", "a", "estudiar", "verbos", "mañana", "examen", "clase", "libro", "página"]
    out = []
    for i in range(tasks):
        words, probs, wrong = [], [], []
        for _ in range(10):
            if rng.random() < accent:  # the accent's mistake: always the same word, and the model is sure of it
                words.append("lo")
                probs.append(rng.uniform(0.7, 0.99))
                wrong.append(True)
                continue
            bad = rng.random() < slips
            words.append(rng.choice(vocabulary))
            probs.append(rng.uniform(0.05, 0.6) if bad else rng.uniform(0.35, 1.0))
            wrong.append(bad)
        out.append(CheckedTranscript(f"t{i:03d}", tuple(words), tuple(probs), (1,) * 10, tuple(wrong)))
    return out


def test_the_scorer_learns_the_mistakes_the_model_is_sure_of_and_is_measured_out_of_fold():
    samples = _classroom(0, 80)
    fit = fit_checks(samples)
    assert fit.calibrated and fit.words == 800
    # The model's own doubt cannot see "lo": marking a quarter of the words by probability misses most of it.
    by_probability = choose_threshold([(1 - p, bad) for s in samples for p, bad in zip(s.probabilities, s.wrong, strict=True)])
    assert by_probability.recall < 0.6
    # The scorer, judged on tasks it did not learn from, marks most wrong words within the quarter.
    assert fit.folds_marked_share <= 0.27
    assert fit.folds_recall >= 0.8 > by_probability.recall + 0.2
    assert fit.folds_error is not None and fit.folds_error < 0.06
    assert fit.scores(["lo"], [0.95], [1])[0] > 0.8 > fit.scores(["clase"], [0.95], [1])[0]
    # It survives a round trip through its JSON record.
    again = WordCheckFit.from_dict(fit.to_dict())
    assert again.scores(["lo", "libro"], [0.9, 0.2], [1, 1]) == pytest.approx(fit.scores(["lo", "libro"], [0.9, 0.2], [1, 1]))


def test_too_few_corrections_mean_no_scorer_and_the_models_own_doubt():
    samples = _classroom(1, (MIN_CALIBRATION_WORDS - 1) // 10)
    fit = fit_checks(samples)
    assert not fit.calibrated and fit.folds_error is None
    assert fit.scores(["lo", "libro"], [0.9, 0.3], [1, 1]) == pytest.approx([0.1, 0.7])
    # The page's rule on the model's own doubt: a quarter of these words marked.
    doubts = [1 - p for s in samples for p in s.probabilities]
    assert mark_point([(d, False) for d in doubts], fit.threshold).marked_share == pytest.approx(0.25, abs=0.01)


def test_the_page_threshold_marks_a_quarter_of_the_words_at_most_and_one_at_least():
    scores = [i / 100 for i in range(100, 0, -1)]  # 1.00 .. 0.01
    assert page_threshold(scores) == 0.76 and sum(p >= 0.76 for p in scores) == 25
    # A tie across the budget moves the cut up, never past the budget.
    tied = [0.9, 0.8, 0.5, 0.5, 0.5, 0.5, 0.2, 0.2, 0.1, 0.1, 0.1, 0.1]
    assert page_threshold(tied) == 0.8
    assert page_threshold([0.9, 0.3]) == 0.9  # a short page: one word
    assert page_threshold([0.7] * 8) == 0.7  # nothing tells the words apart: all of them
    assert page_threshold([0.05] * 8 + [0.02] * 8) == 0.1  # never a word less likely wrong than the floor
    assert page_threshold([]) == 0.5


def test_a_better_versions_pages_get_a_quarter_marked_not_the_cut_of_the_pages_corrected_before():
    corrected = _classroom(0, 80)  # what the corrections were made on: many wrong words
    fit = fit_checks(corrected)
    better = _classroom(7, 80, accent=0.04, slips=0.04)  # the promoted version's pages: fewer, the same kind
    pairs = [(p, bad) for s in better for p, bad in zip(fit.scores(s.words, s.probabilities, s.tokens), s.wrong, strict=True)]
    carried = mark_point(pairs, fit.threshold)
    own = mark_point(pairs, page_threshold([p for p, _ in pairs]))
    assert carried.marked_share < 0.2 and own.marked_share == pytest.approx(0.25, abs=0.01)
    assert own.recall > carried.recall + 0.05


def test_calibration_error_is_the_weighted_gap_between_predicted_and_observed():
    error, table = calibration_error([0.1] * 10 + [0.9] * 10, [False] * 9 + [True] + [True] * 9 + [False])
    assert error == pytest.approx(0.0)
    assert [row[2] for row in table] == [10, 10]
    error, _ = calibration_error([0.9] * 10, [False] * 10)
    assert error == pytest.approx(0.9)


def test_a_word_no_correction_ever_contained_is_suspect_even_when_the_model_is_sure():
    """Mis-hearings the model is sure of, each spelt differently ("pajina7", "pajina8"): no word's own correction
    rate can learn them, but nobody ever said them, while the class's real words recur in the corrections."""
    rng = random.Random(3)
    vocabulary = ["hoy", "vamos", "a", "estudiar", "verbos", "mañana", "examen", "clase", "libro", "página"]
    samples = []
    for i in range(80):
        said = [rng.choice(vocabulary) for _ in range(10)]
        heard = [f"{w[:3]}{i}{k}" if rng.random() < 0.15 else w for k, w in enumerate(said)]
        samples.append(CheckedTranscript.from_correction(
            f"t{i:03d}", heard, [rng.uniform(0.8, 1.0) for _ in heard], [1] * len(heard), " ".join(said)))
    assert all(s.wrong == tuple(h not in vocabulary for h in s.words) for s in samples)
    fit = fit_checks(samples)
    assert fit.folds_recall >= 0.8 and fit.folds_marked_share <= 0.27
    never_said, said = fit.scores(["libr999", "libro"], [0.95, 0.95], [1, 1])
    assert never_said > 0.8 > 0.2 > said
    # Fitting leaves each transcript's own words out: its own reference does not vouch for them.
    learnt = fit.learnt_scores(samples[0])
    assert [score > 0.5 for score in learnt] == list(samples[0].wrong)


def test_a_word_beside_a_silence_the_model_left_is_suspect():
    """Where the model dropped a word it leaves a gap, and the correction blames the word before it: the same
    word, as sure, is more likely wrong with a silence after it than between close neighbours."""
    rng = random.Random(5)
    vocabulary = ["hoy", "vamos", "a", "estudiar", "verbos", "mañana", "examen", "clase", "libro", "página"]
    samples = []
    for i in range(80):
        said = [rng.choice(vocabulary) for _ in range(10)]
        heard, starts, ends, clock = [], [], [], 0.3
        for k, word in enumerate(said):
            if 0 < k < 9 and rng.random() < 0.12:
                clock += 0.6  # spoken but not transcribed: a silence in the words' times
                continue
            heard.append(word)
            starts.append(clock)
            ends.append(clock + 0.3)
            clock += 0.3
        samples.append(CheckedTranscript.from_correction(
            f"t{i:03d}", heard, [rng.uniform(0.8, 1.0) for _ in heard], [1] * len(heard), " ".join(said), starts, ends))
    fit = fit_checks(samples)
    assert fit.folds_recall >= 0.7 and fit.folds_marked_share <= 0.27
    before_gap, closed = fit.scores(["libro", "clase", "libro", "clase"], [0.9] * 4, [1] * 4,
                                    [0.3, 1.2, 1.5, 1.8], [0.6, 1.5, 1.8, 2.1])[:2]
    assert before_gap > 0.5 > closed
    # Without times (a cache entry from before they were kept) no silence is assumed anywhere.
    assert fit.scores(["libro", "clase"], [0.9, 0.9], [1, 1])[0] < 0.5
    again = WordCheckFit.from_dict(fit.to_dict())
    assert again.scores(["libro"], [0.9], [1], [0.3], [0.6]) == pytest.approx(fit.scores(["libro"], [0.9], [1], [0.3], [0.6]))
