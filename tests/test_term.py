"""A term of three rounds through the product's own path: real Label Studio, the tiny Whisper, real training.

The tiny random Whisper cannot pass the gate credibly (tests/test_watch.py says why), so the term serves
every candidate with the gate's decision recorded (``force_promotion``): what is checked here is the loop's
bookkeeping, round after round. bench/term measures the quality on whisper-base.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from habla_ls.term import TermOptions, read_log, run_term
from ml_backend.audio import encode_wav
from ml_backend.registry import read_card, read_current

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow, pytest.mark.usefixtures("tiny_decoding")]

SENTENCES = (
    "Buenos días a todos.", "Abrid el libro por favor.", "Muy bien, seguimos.", "Cerrad la ventana.",
    "Hoy hablamos de los verbos.", "¿Quién ha terminado?",
)
TRAIN_CONFIG = (
    "max_steps = 2\nbatch_size = 4\nearly_stopping_patience = 0\ngeneration_max_length = 16\n"
    'start_from = "root"\n'
)


@pytest.fixture
def term_settings(ls_settings, ls_cli_env, tiny_registry, espeak_clip, make_recordings, tmp_path):
    tiny_registry(ls_settings.models_dir)
    regression = tmp_path / "regression"
    regression.mkdir()
    rows = []
    for i, sentence in enumerate(SENTENCES[:3]):
        path = regression / f"r{i}.wav"
        path.write_bytes(encode_wav(espeak_clip(sentence, voice="es-419", speed=140)))
        rows.append({"audio_path": str(path), "transcript": sentence, "duration": 2.0, "speaker": "espeak:es-419", "session": "reg"})
    (regression / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recordings = make_recordings(
        ls_settings.home.parent / f"rec-{ls_settings.home.name}", sentences=SENTENCES, sessions=4, segments_per_session=5,
        speakers=("profesora", "alumno"), live_session=False,
    )
    settings = dataclasses.replace(ls_settings, recordings=recordings.root, regression_manifest=regression / "manifest.jsonl")
    train_config = tmp_path / "train.toml"
    train_config.write_text(TRAIN_CONFIG)
    env = {**ls_cli_env, "HABLA_RECORDINGS": str(recordings.root), "HABLA_LS_REGRESSION_MANIFEST": str(regression / "manifest.jsonl")}
    return settings, recordings.references, train_config, env


def test_three_rounds_rank_only_unlabelled_tasks_chain_versions_and_record_every_gate(term_settings):
    settings, references, train_config, env = term_settings
    options = TermOptions(schedule=(4, 8, 12), strategy="diverse", train_config=train_config, force_promotion=True)

    records = run_term(settings, references, options, echo=lambda line: None)

    assert [r["corrections"] for r in records] == [4, 8, 12]
    total = len(references)
    corrected_so_far: set[str] = set()
    for record in records:
        # Each round ranked every task no human had corrected, and none that one had.
        assert record["ranked_labelled"] == []
        assert record["ranked"] == total - record["corrected_before"]
        assert record["corrected_before"] == len(corrected_so_far)
        assert not corrected_so_far & set(record["corrected_now"])
        corrected_so_far |= set(record["corrected_now"])
        assert record["strategy"] == "diverse"
        # Every gate decision is recorded with its figures, here a refusal overridden by force.
        gate = record["gate"]
        assert gate is not None and gate["report"].endswith(".json")
        assert isinstance(gate["candidate_wer"], float) and isinstance(gate["current_wer"], float)
        assert gate["conditions"] and all("ci_low" in c and "ci_high" in c for c in gate["conditions"])
        assert record["outcome"] == "promoted"
        assert record["served_after"] == record["candidate"] != record["served_before"]

    # The versions chain: each promoted one replaced the one served before it, and (start_from root)
    # each was trained from the root, not on top of the previous fine-tune.
    models = settings.models_dir
    assert records[0]["served_before"] == "tiny-v1"
    for before, after in zip(records, records[1:], strict=False):
        assert after["served_before"] == before["served_after"]
    for record in records:
        card = read_card(models / record["served_after"])
        assert card["baseline_version"] == record["served_before"]
        assert card["parent"] == "tiny-v1"
        assert card["gate"]["forced"] is True
    assert read_current(models) == records[-1]["served_after"]

    # What the teacher sees: the learning curve, each version by the corrections it was trained on.
    status = CliRunner().invoke(cli, ["status"], env=env)
    assert status.exit_code == 0, status.output
    assert "learning curve" in status.output
    curve = json.loads(CliRunner().invoke(cli, ["status", "--json"], env=env).output)["learning_curve"]
    assert [p["version"] for p in curve][0] == "tiny-v1" and curve[0]["corrections"] == 0
    assert {r["served_after"] for r in records} <= {p["version"] for p in curve}
    assert all(a["corrections"] <= b["corrections"] for a, b in zip(curve, curve[1:], strict=False))
    assert max(p["corrections"] for p in curve) == 12
    assert (settings.reports_dir / "learning-curve.png").stat().st_size > 0

    # Resumable: the log holds the rounds, and running the term again does nothing more.
    assert [r["round"] for r in read_log(settings.home)] == [1, 2, 3]
    again = run_term(settings, references, options, echo=lambda line: None)
    assert len(again) == 3 and read_current(models) == records[-1]["served_after"]

    # Killed after round 3's finish answered, before its record was written (bench/term scores each version
    # first, for minutes): the round runs again, its finish is up to date, and the record keeps that
    # finish's answer (the candidate, promoted, judged against the version served before it) and the
    # corrections the round made before the kill.
    log = settings.reports_dir / "term.jsonl"
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines()[:2]))
    resumed = run_term(settings, references, options, echo=lambda line: None)[-1]
    assert resumed["corrected_before"] == 8 and resumed["corrections"] == 12
    assert sorted(resumed["corrected_now"]) == sorted(records[-1]["corrected_now"])
    for key in ("candidate", "outcome", "served_before", "served_after"):
        assert resumed[key] == records[-1][key], key
    assert resumed["gate"]["report"] == records[-1]["gate"]["report"]
