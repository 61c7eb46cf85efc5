"""Marking the words to check and calibrating how many are wrong, measured on corrections."""

from __future__ import annotations

import random

import pytest

from training.word_checks import (
    CheckedTranscript,
    calibration_error,
    choose_threshold,
    fit_calibration,
    mark_point,
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


def test_the_threshold_marks_most_wrong_words_within_a_quarter_of_all_words():
    rng = random.Random(0)
    samples = []
    for i in range(60):
        probs, wrong = [], []
        for _ in range(10):
            is_wrong = rng.random() < 0.1
            probs.append(rng.uniform(0.05, 0.6) if is_wrong else rng.uniform(0.4, 1.0))
            wrong.append(is_wrong)
        samples.append(CheckedTranscript(f"t{i}", tuple(probs), tuple(wrong)))
    chosen = choose_threshold(samples)
    assert chosen.marked_share <= 0.25
    assert chosen.recall >= 0.8
    # A higher threshold marks more words than allowed.
    assert mark_point(samples, chosen.threshold + 0.2).marked_share > 0.25


def test_calibration_is_monotone_and_measured_out_of_fold():
    rng = random.Random(1)
    samples = []
    for i in range(80):
        probs = [rng.random() for _ in range(8)]
        wrong = [rng.random() < (1 - p) ** 2 for p in probs]  # truly P(wrong) = (1 - p)^2
        samples.append(CheckedTranscript(f"t{i}", tuple(probs), tuple(wrong)))
    calibration = fit_calibration(samples)
    assert calibration.calibrated
    rates = [calibration.wrong_probability(p / 10) for p in range(11)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert calibration.wrong_probability(0.05) == pytest.approx(0.9, abs=0.12)
    assert calibration.wrong_probability(0.95) == pytest.approx(0.0, abs=0.08)
    assert calibration.folds_error is not None and calibration.folds_error < 0.06
    # The naive reading (P(wrong) = 1 - p) is off for this model: the out-of-fold fit is not.
    naive, _ = calibration_error([1 - p for s in samples for p in s.probabilities], [w for s in samples for w in s.wrong])
    assert naive > calibration.folds_error + 0.05
