"""Evaluation through the serving engine: reports, cards, comparisons, and figures checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from ml_backend.engine import DecodeOptions
from ml_backend.registry import read_card
from tests.training_data import make_home, make_regression_manifest
from training.evaluate import EvaluateError, evaluate
from training.normalize import normalise


def _edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Plain Levenshtein over words, written independently of jiwer to check its figures."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]


@pytest.fixture
def evaluated_home(tmp_path: Path, tiny_registry) -> tuple[Path, list[str], Path]:
    home = tmp_path / "home"
    make_home(home, sessions=5, per_session=2)
    versions = [tiny_registry(home / "models"), tiny_registry(home / "models")]
    regression = make_regression_manifest(tmp_path / "regression", count=2)
    return home, versions, regression


def test_evaluate_writes_reports_cards_and_hand_checkable_figures(evaluated_home) -> None:
    home, (first, second), regression = evaluated_home
    # A random model never stops talking: bound its output and skip temperature fallback (sampling).
    fast = DecodeOptions(max_new_tokens=8, temperatures=(0.0,))
    evaluations = evaluate(
        home, [first, second], regression_manifest=regression, beam_size=1, progress=False, decode_options=fast
    )
    assert [e.version for e in evaluations] == [first, second]

    report = json.loads((home / "reports" / f"{first}.json").read_text())
    for suffix in ("md", "png"):
        assert (home / "reports" / f"{first}.{suffix}").stat().st_size > 0
    test = report["sets"]["test"]
    assert test["utterances"] >= 2 and report["sets"]["regression"]["utterances"] == 2
    # recompute the normalised WER from the recorded transcripts with an independent edit distance
    errors = words = 0
    for u in test["per_utterance"]:
        ref, hyp = normalise(u["reference"]).split(), normalise(u["hypothesis"]).split()
        errors += _edit_distance(ref, hyp)
        words += len(ref)
    assert test["wer"]["normalised"] == pytest.approx(errors / words)
    assert set(test["by_session"]) == {u["session"] for u in test["per_utterance"]}

    card = read_card(home / "models" / first)
    assert card["test_wer_normalised"] == pytest.approx(test["wer"]["normalised"])
    assert card["regression_wer"] == pytest.approx(report["sets"]["regression"]["wer"]["normalised"])
    assert card["test_split_id"] == read_card(home / "models" / second)["test_split_id"]
    assert read_card(home / "models" / second)["baseline_wer"] == pytest.approx(card["test_wer_normalised"])
    comparison = home / "reports" / f"compare-{first}-vs-{second}.md"
    assert "same audio for both: yes" in comparison.read_text()
    assert (home / "reports" / f"compare-{first}-vs-{second}.png").is_file()
    # the same weights decoded the same (deterministic) way give the same figures
    assert evaluations[0].test_wer == evaluations[1].test_wer


def test_evaluate_cli_and_clear_errors(evaluated_home, tmp_path: Path) -> None:
    home, (first, _), regression = evaluated_home
    runner = CliRunner()
    unknown = runner.invoke(cli, ["--home", str(home), "evaluate", "nope-v1", "--no-regression"])
    assert unknown.exit_code != 0 and "no model version" in unknown.output
    with pytest.raises(EvaluateError, match="manifest not found"):
        evaluate(tmp_path / "empty", [first], include_regression=False)
