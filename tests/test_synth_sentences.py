"""The sentence sets: sizes, stable ids, no overlap, other vocabulary in the test set, accent-rich."""

from __future__ import annotations

import re

import pytest

from synth.accent import respell
from synth.sentences import CLASSROOM, EVERYDAY, REGRESSION, SETS, sentence_set

# Function words and auxiliaries: sharing these is not sharing vocabulary.
_FUNCTION_WORDS_TEXT = """
porque siempre después mañana también nuestro nuestra ahora estas estos están antes mucho mucha muchos
muchas todos todas tiene tienen cuando desde sobre entre hasta otra otro durante cerca encima junto hacia
demasiado nuevo nuevos nueva nuevas estar este esta para hemos
"""
FUNCTION_WORDS = set(_FUNCTION_WORDS_TEXT.split())


def content_words(sentences) -> set[str]:
    words = {w for s in sentences for w in re.findall(r"[a-záéíóúüñ]+", s.text.lower())}
    return {w for w in words if len(w) >= 5 and w not in FUNCTION_WORDS}


def test_sizes_and_ids() -> None:
    assert len(CLASSROOM) >= 150 and len(EVERYDAY) >= 80 and len(REGRESSION) >= 30
    for prefix, sentences in (("A", CLASSROOM), ("B", EVERYDAY), ("R", REGRESSION)):
        assert [s.id for s in sentences] == [f"{prefix}{i:03d}" for i in range(1, len(sentences) + 1)]
    assert sentence_set("everyday") is EVERYDAY and {"classroom", "everyday", "regression", "household"} <= set(SETS)
    with pytest.raises(ValueError, match="unknown sentence set"):
        sentence_set("news")


def test_no_sentence_twice_and_no_digits() -> None:
    texts = [s.text for group in SETS.values() for s in group]
    assert len(texts) == len(set(texts))
    assert not [t for t in texts if re.search(r"\d", t)], "numbers must be spelt out of the sentences"
    # clip-sized: a few seconds of speech each
    assert all(3 <= len(t.split()) <= 14 for t in texts)


def test_test_set_has_other_vocabulary_than_the_training_set() -> None:
    train, test = content_words(CLASSROOM), content_words(EVERYDAY)
    shared = train & test
    assert len(shared) / len(test) < 0.02, f"shared content words: {sorted(shared)}"


def test_sets_exercise_the_accent_rules() -> None:
    for sentences in (CLASSROOM, EVERYDAY):
        changed = [s for s in sentences if respell(s.text).applied]
        assert len(changed) / len(sentences) > 0.9
        rules = {rule for s in sentences for rule in respell(s.text).applied}
        assert rules == {"seseo", "yeismo", "d_elision", "s_aspiration"}
