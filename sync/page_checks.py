"""The labelling page's word checks: where in a prefilled transcript the annotator should listen.

Built from the words of the version that prefills the page, each with its time in the clip, its
probability and its token count (:class:`ml_backend.engine.Word`, kept in the prediction cache as
``[text, start, end, p, tokens]``), and each word's P(wrong) as the corrections so far estimate it
(:mod:`training.word_checks`, passed in):

- ``check_text``: the transcript as HTML with the words whose P(wrong) reaches the threshold in
  ``<mark>`` (P(wrong) and the time in the tooltip), for Label Studio's HyperText above the text box;
- ``check_words``: one row per stretch of marked words for Label Studio's Paragraphs, synced with the
  audio: its play button plays the stretch (a quarter second either side), its text shows the words
  around it.

Punctuation the tokenizer gives as words of its own (``"."``) joins the word before it: it is never worth
a mark.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sync.labelling_config import DATA_CHECK_TEXT, DATA_CHECK_WORDS, DATA_CONFIDENCE, NO_CHECK_ROWS

MARGIN_SECONDS = 0.25  # played around a marked stretch: a word cut at its edge is hard to judge
CONTEXT_WORDS = 3  # words shown either side of a marked stretch in its row


@dataclass(frozen=True)
class PageWord:
    text: str  # as decoded, with its leading space
    start: float
    end: float
    probability: float
    tokens: int = 1


def words_from_meta(raw: Sequence[Sequence[Any]] | None) -> list[PageWord]:
    """The cache's ``[[text, start, end, p, tokens], ...]`` as words, punctuation-only pieces joined to the
    word before (entries cached before token counts were kept count one token)."""
    words: list[PageWord] = []
    for item in raw or []:
        try:
            text, start, end, p = str(item[0]), float(item[1]), float(item[2]), float(item[3])
            tokens = int(item[4]) if len(item) > 4 else 1
        except (TypeError, ValueError, IndexError):
            continue
        if words and not any(c.isalnum() for c in text):
            last = words[-1]
            words[-1] = PageWord(last.text + text.strip(), last.start, max(last.end, end), last.probability, last.tokens)
        elif any(c.isalnum() for c in text):
            words.append(PageWord(text, start, end, p, tokens))
    return words


def check_text(words: Sequence[PageWord], wrong: Sequence[float], threshold: float, version: str) -> str:
    """The HTML line: a label naming the version, then the words, those whose P(wrong) reaches the threshold marked."""
    if not words:
        return ""
    parts = []
    for word, p_wrong in zip(words, wrong, strict=True):
        text = html.escape(word.text.strip())
        if p_wrong >= threshold:
            text = f'<mark title="P(wrong) {p_wrong:.2f}, at {word.start:.1f} s">{text}</mark>'
        parts.append(text)
    marked = any(p >= threshold for p in wrong)
    label = f"Words to check ({html.escape(version)})" if marked else f"Nothing to check marked ({html.escape(version)})"
    return f"<b>{label}:</b> " + " ".join(parts)


def check_rows(words: Sequence[PageWord], wrong: Sequence[float], threshold: float) -> list[dict[str, Any]]:
    """One playable row per stretch of consecutive marked words (with none, the hidden empty row the page
    needs: :data:`sync.labelling_config.NO_CHECK_ROWS`)."""
    flags = [p >= threshold for p in wrong]
    rows, i = [], 0
    while i < len(words):
        if not flags[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(words) and flags[j + 1]:
            j += 1
        stretch = " ".join(w.text.strip() for w in words[i : j + 1])
        before = " ".join(w.text.strip() for w in words[max(0, i - CONTEXT_WORDS) : i])
        after = " ".join(w.text.strip() for w in words[j + 1 : j + 1 + CONTEXT_WORDS])
        context = " ".join(p for p in ("…" + before if before else "", f"«{stretch}»", after + "…" if after else "") if p)
        rows.append({
            "author": stretch,
            "text": context,
            "start": round(max(0.0, words[i].start - MARGIN_SECONDS), 2),
            "end": round(words[j].end + MARGIN_SECONDS, 2),
        })
        i = j + 1
    return rows or [dict(row) for row in NO_CHECK_ROWS]


def likely_wrong_text(expected: float | None, words: int, version: str, *, calibrated_on: int, needed: int,
                      confidence: float) -> str:
    """The page's number: the calibrated count of likely wrong words, or why there is none yet."""
    if expected is None:
        return (f"not calibrated yet ({calibrated_on} of the {needed} corrected words needed); "
                f"{version}'s own confidence {min(1.0, max(0.0, confidence)):.2f}")
    return f"about {expected:.1f} of {words} words ({version}; calibrated on {calibrated_on} corrected words)"


def page_checks(words: Sequence[PageWord], wrong: Sequence[float], threshold: float, version: str,
                likely_wrong: str) -> dict[str, Any]:
    """The task data the page's checks read (merged into the task's data)."""
    return {
        DATA_CHECK_TEXT: check_text(words, wrong, threshold, version),
        DATA_CHECK_WORDS: check_rows(words, wrong, threshold),
        DATA_CONFIDENCE: likely_wrong,
    }
