"""Spanish text normalisation for WER: what counts as "the same words".

Two levels, each a composition of jiwer transforms that maps a string to a string:

* :data:`normalise` — lowercase, punctuation removed (including ``¿ ¡ « » — …``), whitespace collapsed.
  Accents and ``ñ`` are kept: ``él``/``el`` or ``año``/``ano`` are different words in Spanish and a
  model that drops the accent made a real spelling mistake.
* :data:`normalise_accent_insensitive` — the same, then acute accents and diaeresis folded
  (``á→a``, ``ü→u``). ``ñ`` is a letter of its own, not an accented ``n``, so it is kept even here.
  Reported as a second figure, to tell spelling-of-accents errors from recognition errors.

The raw figure uses :data:`raw` (whitespace only), so all three go through the same code path.
"""

from __future__ import annotations

import unicodedata

import jiwer

# Apostrophes inside a word join it ("O'Donnell"); any other punctuation or symbol separates words,
# so "hola,adiós" is two words and "¿qué?" one.
_PUNCTUATION_TO_SPACE = {
    r"(?<=\w)['’](?=\w)": "",
    r"[^\w\s]|_": " ",
}


class UnicodeNFC(jiwer.AbstractTransform):
    """Compose decomposed accents (``a`` + U+0301) so that equal-looking words compare equal."""

    def process_string(self, s: str) -> str:
        return unicodedata.normalize("NFC", s)


class FoldAccents(jiwer.AbstractTransform):
    """Drop acute/grave accents and diaeresis; keep ``ñ``/``Ñ`` (a distinct letter)."""

    _KEEP = {"ñ", "Ñ"}

    def process_string(self, s: str) -> str:
        out = []
        for char in s:
            if char in self._KEEP:
                out.append(char)
                continue
            decomposed = unicodedata.normalize("NFD", char)
            out.append("".join(c for c in decomposed if not unicodedata.combining(c)))
        return "".join(out)


raw = jiwer.Compose([UnicodeNFC(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])

normalise = jiwer.Compose(
    [
        UnicodeNFC(),
        jiwer.ToLowerCase(),
        jiwer.SubstituteRegexes(_PUNCTUATION_TO_SPACE),
        jiwer.RemoveWhiteSpace(replace_by_space=True),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
    ]
)

normalise_accent_insensitive = jiwer.Compose([normalise, FoldAccents()])

# name -> transform; the order is the order figures appear in reports
LEVELS: dict[str, jiwer.Compose] = {
    "raw": raw,
    "normalised": normalise,
    "accent_insensitive": normalise_accent_insensitive,
}


def normalise_text(text: str) -> str:
    """The normalised form of one string (convenience for callers outside metrics)."""
    return normalise(text)
