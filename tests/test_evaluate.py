"""Evaluation through the serving engine: reports, cards, comparisons, and figures checked by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from ml_backend.decoding import DecodeOptions
from ml_backend.registry import read_card, read_current
from tests.training_data import make_home, make_regression_manifest, spoken
from training.evaluate import EvaluateError, evaluate
from training.normalize import normalise
from training.paired_sets import ESPEAK_ONLY_NOTE
from training.regression_set import STANDARD_SENTENCES


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
    # every utterance carries its own normalised-level counts and slice keys, summing to the set's figures
    totals = test["levels"]["normalised"]["words"]
    for count in ("substitutions", "deletions", "insertions"):
        assert sum(u[count] for u in test["per_utterance"]) == totals[count]
    assert sum(u["reference_words"] for u in test["per_utterance"]) == words == totals["reference_length"]
    assert {u["family"] for u in test["per_utterance"]} == {"recorded"}
    assert {u["loudness"] for u in test["per_utterance"]} <= {"quiet", "normal"}

    card = read_card(home / "models" / first)
    assert Path(card["eval_report"]) == (home / "reports" / f"{first}.json").resolve()
    assert card["test_wer_normalised"] == pytest.approx(test["wer"]["normalised"])
    assert card["regression_wer"] == pytest.approx(report["sets"]["regression"]["wer"]["normalised"])
    assert card["test_split_id"] == read_card(home / "models" / second)["test_split_id"]
    assert read_card(home / "models" / second)["baseline_wer"] == pytest.approx(card["test_wer_normalised"])
    comparison = (home / "reports" / f"compare-{first}-vs-{second}.md").read_text()
    assert "same audio for both: yes" in comparison
    # the served version (first) is the reference; the same weights cannot be a credible improvement
    assert f"## Promotion gate: {second} against {first}" in comparison
    assert f"| slice | clips | words | WER {first} | WER {second} | difference | 95 % CI |" in comparison
    assert "| test |" in comparison and "**no improvement**" in comparison
    assert "WER by slice, with bootstrap intervals" in (home / "reports" / f"{first}.md").read_text()
    assert (home / "reports" / f"compare-{first}-vs-{second}.png").is_file()
    # the same weights decoded the same (deterministic) way give the same figures
    assert evaluations[0].test_wer == evaluations[1].test_wer


def test_evaluation_decodes_each_clip_alone_unless_told_to_pack(evaluated_home, monkeypatch) -> None:
    """Habla transcribes one segment per call: evaluation does too, so no clip's words depend on another's."""
    from ml_backend.loading import load_engine

    home, (first, _), _ = evaluated_home
    monkeypatch.setenv("HABLA_LS_MAX_NEW_TOKENS", "8")  # a random model never stops talking
    monkeypatch.setenv("HABLA_LS_TEMPERATURES", "0")
    engine = load_engine(home / "models" / first)  # the process's engine, which evaluation shares
    before = engine.counters.copy()
    [alone] = evaluate(home, [first], include_regression=False, beam_size=1, progress=False)
    done = engine.counters - before
    clips = alone.reports["test"].utterances
    assert clips >= 2 and done["packed_windows"] == 0 and done["alone_clips"] == clips
    assert json.loads((home / "reports" / f"{first}.json").read_text())["decoding"] == "alone"

    before = engine.counters.copy()
    packed = DecodeOptions(max_new_tokens=8, temperatures=(0.0,), pack=True)
    [shared] = evaluate(home, [first], include_regression=False, beam_size=1, progress=False, decode_options=packed)
    assert (engine.counters - before)["packed_windows"] >= 1  # these short clips do share windows when packed
    assert shared.decoding == "packed"


def test_evaluate_cli_and_clear_errors(evaluated_home, tmp_path: Path) -> None:
    home, (first, _), regression = evaluated_home
    runner = CliRunner()
    unknown = runner.invoke(cli, ["--home", str(home), "evaluate", "nope-v1", "--no-regression"])
    assert unknown.exit_code != 0 and "no model version" in unknown.output
    with pytest.raises(EvaluateError, match="manifest not found"):
        evaluate(tmp_path / "empty", [first], include_regression=False)


def _espeak_regression(directory: Path) -> Path:
    """Four standard-Spanish espeak-ng clips named as two held-out espeak-ng voices (no Kokoro)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(STANDARD_SENTENCES[:4]):
        path = directory / f"standard_{i:03d}.wav"
        path.write_bytes(spoken(text, speed=165))
        voice = ("es-419", "es+m3")[i % 2]
        rows.append({"audio_path": str(path), "transcript": text, "session": "regression-espeak-normal", "speaker": f"espeak:{voice}"})
    manifest = directory / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return manifest


def test_promote_evaluates_both_on_the_same_clips_and_judges_them(tmp_path: Path, tiny_registry, monkeypatch) -> None:
    home = tmp_path / "home"
    make_home(home, sessions=5, per_session=2)
    served, candidate = tiny_registry(home / "models"), tiny_registry(home / "models")
    assert read_current(home / "models") == served
    monkeypatch.setenv("HABLA_LS_REGRESSION_MANIFEST", str(_espeak_regression(tmp_path / "regression")))
    # a random model never stops talking: bound its output, no sampling fallback
    monkeypatch.setenv("HABLA_LS_MAX_NEW_TOKENS", "8")
    monkeypatch.setenv("HABLA_LS_TEMPERATURES", "0")
    runner = CliRunner()

    # no reports yet: promote evaluates both on the same clips (the configured regression set), then decides
    refused = runner.invoke(cli, ["--home", str(home), "models", "promote", candidate])
    assert refused.exit_code != 0
    lines = refused.output.splitlines()
    assert lines[0].startswith(f"evaluating {candidate} and {served} on the same clips first")
    assert ESPEAK_ONLY_NOTE in refused.output  # (after the progress bars, which CliRunner mixes into the output)
    # identical weights decode identically: the difference is exactly 0, so no improvement, not credible
    [test_line] = [line.strip() for line in lines if line.strip().startswith("test: WER")]
    assert "(+0.000, 95 % CI +0.000..+0.000)" in test_line and "improvement not credible" in test_line
    assert read_current(home / "models") == served

    reports = home / "reports"
    for name in (f"{candidate}.md", f"{served}.md", f"compare-{candidate}-vs-{served}.md", f"gate-{candidate}-vs-{served}.md"):
        assert (reports / name).read_text().splitlines()[0] == ESPEAK_ONLY_NOTE, name
    own = (reports / f"{candidate}.md").read_text()
    assert f"## Against {served}: paired differences" in own and "| regression voice espeak:es-419 | 2 |" in own
    assert json.loads((reports / f"{candidate}.json").read_text())["decoding"] == "alone"
    regression = json.loads((reports / f"{candidate}.json").read_text())["sets"]["regression"]
    assert regression["utterances"] == 4 and set(regression["by_family"]) == {"espeak"}

    # --force serves it anyway and the overridden reasons are kept
    forced = runner.invoke(cli, ["--home", str(home), "models", "promote", candidate, "--force", "--no-evaluate"])
    assert forced.exit_code == 0, forced.output
    assert read_current(home / "models") == candidate
    assert read_card(home / "models" / candidate)["gate"]["forced"] is True
