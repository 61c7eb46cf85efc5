"""`habla-ls status` and the page's word checks saved by a round: shown when readable, and why not when not."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from habla_ls.word_marks import REPORT_FILE, PageMarks, VersionChecks, WordChecks
from training.word_checks import CheckedTranscript, fit_checks


def _saved_checks() -> WordChecks:
    samples = [
        CheckedTranscript.from_correction(f"task{i}", ["lo", "verbo", "y", "el", "lugar"], [0.9, 0.95, 0.6, 0.9, 0.97],
                                          [1, 1, 1, 1, 1], "los verbos y el lugar" if i % 2 else "lo verbo y el lugar")
        for i in range(60)
    ]
    fit = fit_checks(samples)
    assert fit.calibrated
    return WordChecks(fit, [VersionChecks("whisper-base-v1", 60, 300, 60, 1.0, 0.25)], "2026-12-06T19:30:00+00:00",
                      PageMarks("habla-v2", 0.4321, 50, 412, 0.2476))


def test_status_shows_the_saved_checks(tmp_path: Path) -> None:
    reports = tmp_path / "home" / "reports"
    reports.mkdir(parents=True)
    (reports / REPORT_FILE).write_text(json.dumps(_saved_checks().to_dict()))
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "status"])
    assert result.exit_code == 0, result.output
    assert "word checks: not measured yet" not in result.output
    assert "whisper-base-v1" in result.output and "calibration error" in result.output
    # What the pages are marked with now: the prefilling version's threshold, set on the next tasks.
    assert "the pages mark habla-v2's words from P(wrong) 0.43: a quarter of its 412 words on the next 50 task(s)" in result.output


def test_a_scorer_from_an_older_habla_ls_is_named_on_the_word_checks_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    saved = _saved_checks().to_dict()
    saved["fit"]["scorer"]["weights"] = saved["fit"]["scorer"]["weights"][:7]  # six features and the intercept
    reports = tmp_path / "home" / "reports"
    reports.mkdir(parents=True)
    (reports / REPORT_FILE).write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="habla_ls.word_marks"):
        result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "status"])
    assert result.exit_code == 0, result.output
    # Said once, where the checks would be, and not as a log warning above the whole status.
    assert not [r for r in caplog.records if r.name == "habla_ls.word_marks"]
    [line] = [line for line in result.output.splitlines() if line.startswith("word checks:")]
    assert "not shown" in line and "a scorer of 6 features" in line and str(reports / REPORT_FILE) in line
    assert "next round measures them again" in line
    assert "not measured yet" not in result.output


def test_the_marks_are_set_on_the_next_tasks_in_the_rounds_order() -> None:
    from habla_ls.word_marks import look_ahead

    tasks = [{"id": 1, "data": {}}, {"id": 2, "data": {"priority": 3}}, {"id": 3, "data": {"priority": 1}},
             {"id": 4, "data": {"priority": 2}}, {"id": 5, "data": {}}]
    assert [t["id"] for t in look_ahead(tasks, 3)] == [3, 4, 2]
    assert [t["id"] for t in look_ahead(tasks, 10)] == [3, 4, 2, 1, 5]  # tasks no round ranked come last


def test_before_calibration_status_says_what_the_pages_mark_and_with_what_cut() -> None:
    samples = [CheckedTranscript.from_correction(f"t{i}", ["hola", "clase"], [0.9, 0.4], [1, 1], "hola clase") for i in range(5)]
    checks = WordChecks(fit_checks(samples), [], "", PageMarks("whisper-base-v1", 0.55, 12, 96, 0.25))
    first, page = checks.lines()
    assert "least sure of, a quarter of the next tasks' words" in first and "not calibrated yet (10 of 200" in first
    assert "whisper-base-v1's words from the model's doubt (1 - its probability) 0.55" in page and "next 12 task(s)" in page
