"""The task data of the page's word checks: marked words in the HTML line, one playable row per stretch."""

from __future__ import annotations

from sync.labelling_config import DATA_CHECK_TEXT, DATA_CHECK_WORDS, EMPTY_CHECKS, NO_CHECK_ROWS
from sync.page_checks import PageWord, check_rows, page_checks

WORDS = [PageWord(" Lo", 0.0, 0.3, 0.9), PageWord(" niño", 0.3, 0.7, 0.8), PageWord(" está", 0.7, 1.0, 0.9),
         PageWord(" caeo.", 1.0, 1.5, 0.4)]


def test_each_stretch_of_marked_words_is_a_row_that_plays_it_with_its_context() -> None:
    rows = check_rows(WORDS, [0.6, 0.7, 0.1, 0.8], threshold=0.5)
    assert [r["author"] for r in rows] == ["Lo niño", "caeo."]
    assert rows[0]["text"] == "«Lo niño» está caeo.…" and rows[1]["text"] == "…Lo niño está «caeo.»"
    assert rows[0]["start"] == 0.0 and rows[0]["end"] == 0.95 and rows[1]["start"] == 0.75


def test_a_page_with_nothing_marked_gets_the_hidden_empty_row_never_an_empty_list() -> None:
    # Label Studio's Paragraphs leaves the whole labelling view blank on an empty list (tests/test_browser_checks.py).
    data = page_checks(WORDS, [0.1, 0.2, 0.1, 0.3], 0.5, "habla-v2", "about 0.7 of 4 words")
    assert data[DATA_CHECK_WORDS] == list(NO_CHECK_ROWS) and NO_CHECK_ROWS[0]["author"] == ""
    assert data[DATA_CHECK_TEXT].startswith("<b>Nothing to check marked (habla-v2):</b>")
    assert EMPTY_CHECKS[DATA_CHECK_WORDS] == list(NO_CHECK_ROWS)
