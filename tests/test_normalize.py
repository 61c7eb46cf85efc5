"""The Spanish normaliser: what it removes, and what it must keep."""

from __future__ import annotations

import pytest

from training.normalize import normalise, normalise_accent_insensitive, raw


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("¿Qué tal, Señor Pérez?  ¡Muy bien!", "qué tal señor pérez muy bien"),
        ("hola,adiós", "hola adiós"),  # punctuation separates words
        ("«Dijo» — el año…", "dijo el año"),
        ("O'Donnell", "odonnell"),  # an apostrophe inside a word joins it
        ("  Pingüino\tÑandú\n", "pingüino ñandú"),
        ("e\u0301l", "él"),  # decomposed accent composes
        ("¿?¡!", ""),
    ],
)
def test_normalise_lowercases_strips_punctuation_keeps_accents(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_accent_insensitive_folds_accents_but_keeps_enye() -> None:
    assert normalise_accent_insensitive("¿Él está en España? Pingüino") == "el esta en españa pinguino"
    assert normalise_accent_insensitive("AÑO") == "año"


def test_raw_keeps_case_and_punctuation() -> None:
    assert raw("  ¿Qué  tal? ") == "¿Qué tal?"
