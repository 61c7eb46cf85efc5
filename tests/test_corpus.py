"""Building a labelled synthetic corpus (espeak-ng backend: fast and real) and the make_corpus CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ml_backend.audio import SAMPLE_RATE, probe
from sync.manifest import read_manifest
from synth.sentences import CLASSROOM, EVERYDAY, REGRESSION, Sentence
from synth.voices import HELD_OUT_VOICES, KOKORO, TRAINING_VOICES, voice_parts
from tests.bench_scripts import load_bench_script
from training.corpus import AccentSettings, EspeakBackend, build_corpus, plan_clips

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

SENTENCES = (
    Sentence("T001", "Los niños están cansados."),
    Sentence("T002", "¿Habéis terminado los ejercicios?"),
    Sentence("T003", "La calle está llena de gente."),
)


def test_plan_rotates_voices_and_respects_the_limit() -> None:
    plans = plan_clips(CLASSROOM[:6], ("v1", "v2", "v3"), accented=True, name="train", voices_per_sentence=2, group_size=2)
    assert [p.voice for p in plans] == ["v1", "v2", "v3", "v1", "v2", "v3"] * 2
    # each sentence by two different voices
    assert all(plans[i].voice != plans[i + 1].voice for i in range(0, len(plans), 2))
    assert plans[0].session == "train-v1-g00" and plans[-1].session == "train-v3-g02"
    limited = plan_clips(CLASSROOM, ("v1", "v2"), accented=True, name="t", voices_per_sentence=2, limit=7)
    assert len(limited) == 6  # whole sentences only
    with pytest.raises(ValueError, match="voices_per_sentence"):
        plan_clips(CLASSROOM, ("v1",), accented=True, name="t", voices_per_sentence=2)


def test_a_mixed_plan_gives_every_clip_a_blend_of_its_own() -> None:
    voices = ("jf_alpha", "jf_gongitsune", "jf_tebukuro+jf_alpha")
    plans = plan_clips(CLASSROOM[:25], voices, accented=True, name="train", mix=True)
    assert len({p.voice for p in plans}) == 25
    assert all(set(voice_parts(KOKORO, p.voice)) <= {"jf_alpha", "jf_gongitsune", "jf_tebukuro"} for p in plans)
    assert [p.session for p in plans[9:11]] == ["train-mix-g00", "train-mix-g01"]
    assert plans == plan_clips(CLASSROOM[:25], voices, accented=True, name="train", mix=True)


def test_corpus_rows_wavs_and_reuse(tmp_path: Path) -> None:
    backend = EspeakBackend()
    voices = backend.voices[:2]
    plans = plan_clips(SENTENCES, voices, accented=True, name="acc") + plan_clips(
        SENTENCES, voices, accented=False, name="std"
    )
    result = build_corpus(tmp_path / "c", plans, backend, progress=False)
    assert result.failed == [] and result.synthesised == 6 and result.reused == 0

    rows = read_manifest(tmp_path / "c")
    assert len(rows) == 6 and (tmp_path / "c" / "manifest.csv").is_file()
    by_kind = {("accented" if "accent" in r.notes else "standard", r.transcript): r for r in rows}
    accented = by_kind[("accented", "Los niños están cansados.")]
    standard = by_kind[("standard", "Los niños están cansados.")]
    # the reference keeps standard spelling; the notes say what was spoken and which rules changed it
    assert "spoken: Loh niñoh ehtán cansao." in accented.notes
    assert "d_elision" in accented.notes and "s_aspiration" in accented.notes
    assert "spoken: Los niños están cansados." in standard.notes
    for row in rows:
        info = probe(row.audio_path)
        assert Path(row.audio_path).is_absolute()
        assert info.sample_rate == SAMPLE_RATE and info.channels == 1
        assert row.duration == pytest.approx(info.duration, abs=0.01) and 0.5 < row.duration < 10
        assert row.speaker in {f"espeak:{voice}" for voice in voices} and row.segment_key.startswith(row.session + "/")
        assert len(row.sha256) == 64

    again = build_corpus(tmp_path / "c", plans, backend, progress=False)
    assert again.synthesised == 0 and again.reused == 6
    assert read_manifest(tmp_path / "c") == rows

    # other accent settings: the accented clips are made again (their spoken form changed), no others
    milder = build_corpus(tmp_path / "c", plans, backend, accent=AccentSettings(("seseo", "yeismo")), progress=False)
    assert milder.reused == 3 and milder.synthesised == 3
    assert any(r.notes.endswith("spoken: La caye está yena de gente.") for r in milder.rows)


def test_a_bad_clip_is_reported_and_the_rest_goes_on(tmp_path: Path) -> None:
    backend = EspeakBackend()
    plans = plan_clips(SENTENCES, (backend.voices[0], "no-such-voice"), accented=False, name="s")
    result = build_corpus(tmp_path / "c", plans, backend, progress=False)
    assert len(result.rows) == 2 and len(result.failed) == 1
    assert result.failed[0].startswith("T002 (no-such-voice, standard): skipped: unknown espeak voice")


def test_make_corpus_cli_writes_the_three_sets(tmp_path: Path) -> None:
    module = load_bench_script("quality/make_corpus.py", "make_corpus")
    out = tmp_path / "corpus"
    args = ["--out", str(out), "--backend", "espeak", "--train-clips", "4", "--test-sentences", "2"]
    result = CliRunner().invoke(module.main, args)
    assert result.exit_code == 0, result.output
    train, accent, standard = (read_manifest(out / name) for name in ("train", "test_accent", "test_standard"))
    assert len(train) == 4 and len(accent) == 2 and len(standard) == 2
    # training voices train; the tests are spoken by the held-out voices nothing trained on
    assert {r.speaker for r in train} == {f"espeak:{v}" for v in TRAINING_VOICES["espeak"]}
    assert {r.speaker for r in accent + standard} == {f"espeak:{v}" for v in HELD_OUT_VOICES["espeak"]}
    classroom = {s.text for s in CLASSROOM}
    assert {r.transcript for r in train} <= classroom
    assert [r.transcript for r in accent] == [r.transcript for r in standard]
    assert {r.transcript for r in accent} <= {s.text for s in EVERYDAY[:2]}
    assert all("accent" in r.notes for r in train + accent)
    assert "test_standard" in result.output and "hours" in result.output

    # A second held-out set: the regression sentences, each by both held-out voices, no training set.
    second = tmp_path / "second"
    args = ["--out", str(second), "--backend", "espeak", "--train-clips", "0", "--test-set", "regression",
            "--test-sentences", "2", "--test-voices-per-sentence", "2"]
    result = CliRunner().invoke(module.main, args)
    assert result.exit_code == 0, result.output
    assert not (second / "train").exists()
    accent, standard = (read_manifest(second / name) for name in ("test_accent", "test_standard"))
    assert sorted(r.transcript for r in accent) == sorted(s.text for s in REGRESSION[:2] for _ in range(2))
    assert {(r.transcript, r.speaker) for r in accent} == {(r.transcript, r.speaker) for r in standard}
    assert len({r.speaker for r in accent}) == 2

    bad = CliRunner().invoke(module.main, ["--out", str(out), "--backend", "espeak", "--rules", "ceceo"])
    assert bad.exit_code != 0 and "unknown accent rule" in bad.output
    unmixable = CliRunner().invoke(module.main, ["--out", str(out), "--backend", "espeak", "--train-voice-mix"])
    assert unmixable.exit_code == 2 and "only Kokoro voices can be blended" in unmixable.output


def test_the_test_sentences_share_none_with_the_training_sentences() -> None:
    module = load_bench_script("quality/make_corpus.py", "make_corpus")
    classroom = {s.text for s in CLASSROOM}
    tests = {name: {s.text for s in group} for name, group in module.TEST_SETS.items()}
    assert set(tests) == {"everyday", "regression", "household"}
    for name, texts in tests.items():
        assert not texts & classroom, name
        assert all(not texts & other for other_name, other in tests.items() if other_name != name), name
