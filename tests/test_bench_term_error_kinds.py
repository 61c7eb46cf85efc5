"""bench/term/error_kinds.py: every word error falls in one kind, and the kinds add up to the edit count."""

from __future__ import annotations

import jiwer

from tests.bench_scripts import bench_script
from training.normalize import normalise


def test_each_kind_of_accent_error_is_told_apart() -> None:
    with bench_script("term/error_kinds.py", "bench_term_error_kinds") as kinds:
        assert kinds.substitution_kind("las", "la") == "number"
        assert kinds.substitution_kind("sábados", "sabado") == "number"
        assert kinds.substitution_kind("sábados", "sabados") == "accent mark"
        assert kinds.substitution_kind("año", "ano") == "misheard"  # ñ is a letter of its own, as the WER has it
        for reference, hypothesis in (("barrio", "vario"), ("vendedores", "vendeores"), ("plazuela", "plasuela"),
                                      ("hermita", "ermita"), ("cerveza", "servesa"), ("madrugada", "madrugá")):
            assert kinds.substitution_kind(reference, hypothesis) == "spelt as said", (reference, hypothesis)
        assert kinds.substitution_kind("olas", "bolas") == "misheard"
        assert kinds.substitution_kind("costa", "corta") == "misheard"


def test_the_kinds_of_an_utterance_add_up_to_its_word_errors() -> None:
    reference = "Los turistas pasean por las calles estrechas del barrio."
    hypothesis = "pues los turista pasean por la calle estrecha del vario"
    with bench_script("term/error_kinds.py", "bench_term_error_kinds") as kinds:
        counted = kinds.error_kinds(kinds.Alignment.of(reference, hypothesis))
    assert counted == {"number": 4, "spelt as said": 1, "inserted": 1}
    output = jiwer.process_words(normalise(reference), normalise(hypothesis))
    assert sum(counted.values()) == output.substitutions + output.insertions + output.deletions
    with bench_script("term/error_kinds.py", "bench_term_error_kinds") as kinds:
        assert kinds.error_kinds(kinds.Alignment.of("hola a todos", "")) == {"dropped": 3}
        assert kinds.error_kinds(kinds.Alignment.of("", "hola")) == {"inserted": 1}


def test_missed_words_are_the_reference_words_substituted_or_dropped() -> None:
    with bench_script("term/error_kinds.py", "bench_term_error_kinds") as kinds:
        assert kinds.missed_words(kinds.Alignment.of("Las olas rompen contra las rocas.", "la bolas rompen las rocas de noche")) == [
            ("las", True), ("olas", True), ("rompen", False), ("contra", True), ("las", False), ("rocas", False),
        ]
        assert kinds.missed_words(kinds.Alignment.of("hola a todos", "")) == [("hola", True), ("a", True), ("todos", True)]
