"""The standard-Spanish regression set judges a model on sentences and voices that no training audio of
the project uses, across voice families (Kokoro when installed, espeak-ng), at normal and quiet levels."""

from __future__ import annotations

import ast
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from ml_backend.audio import SAMPLE_RATE, decode, probe, rms_dbfs
from synth import voices as voice_sets
from synth.kokoro import kokoro_installed
from synth.sentences import CLASSROOM, EVERYDAY, REGRESSION, SETS
from synth.voices import ESPEAK, HELD_OUT_VOICES, KOKORO, TRAINING_VOICES, is_held_out
from tests.bench_scripts import load_bench_script
from training import regression_clips as rc
from training import regression_set as rs
from training.metrics import DEFAULT_QUIET_DBFS
from training.normalize import normalise

ROOT = Path(__file__).resolve().parents[1]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
NGRAM = 5  # a shared run of this many words makes a near-copy, not just a common phrase


def _ngrams(text: str) -> set[tuple[str, ...]]:
    words = normalise(text).split()
    return {tuple(words[i:i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def training_sentences() -> dict[str, list[str]]:
    """Every sentence the demo, the tests and the benchmarks speak for training (and the benchmarks' tests)."""
    from habla_ls.sample_recordings import DEFAULT_SENTENCES
    from tests.training_data import SENTENCES as TEST_TRAINING_SENTENCES

    sources = {
        "CLASSROOM (demo, accent benchmark training)": [s.text for s in CLASSROOM],
        "EVERYDAY (benchmark test sets)": [s.text for s in EVERYDAY],
        "sample_recordings.DEFAULT_SENTENCES": list(DEFAULT_SENTENCES),
        "tests/training_data.SENTENCES": list(TEST_TRAINING_SENTENCES),
        "regression_set.STANDARD_SENTENCES (test helpers)": list(rs.STANDARD_SENTENCES),
    }
    for name, sentences in SETS.items():
        if name != "regression":  # e.g. the replay set mixed into training, once it exists
            sources.setdefault(f"sentence set {name!r}", [s.text for s in sentences])
    return sources


def test_regression_sentences_share_no_sentence_and_no_five_word_run_with_training_sources() -> None:
    regression = {normalise(s.text): s.id for s in REGRESSION}
    assert len(regression) == len(REGRESSION) >= 40
    grams = {gram: s.id for s in REGRESSION for gram in _ngrams(s.text)}
    for source, sentences in training_sentences().items():
        same = sorted({regression[normalise(t)] for t in sentences if normalise(t) in regression})
        assert not same, f"{source} speaks regression sentence(s) {same}"
        near = sorted({(grams[g], t) for t in sentences for g in _ngrams(t) if g in grams})
        assert not near, f"{source} shares a {NGRAM}-word run with the regression set: {near[:3]}"


def test_the_replay_set_is_checked_when_it_exists() -> None:
    if "replay" not in SETS:
        pytest.skip("no replay sentence set yet")
    from synth.sentences import sentence_set

    assert any(key.startswith("sentence set 'replay'") for key in training_sentences())
    replay = {normalise(s.text) for s in sentence_set("replay")}
    assert replay and not replay & {normalise(s.text) for s in REGRESSION}


def _string_literals(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return []
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_other_source_file_speaks_a_regression_sentence() -> None:
    """What grep would find: a regression sentence typed into any other module, test or benchmark."""
    regression = [normalise(s.text) for s in REGRESSION]
    own = {ROOT / "habla_ls" / "synth" / "sentences.py", Path(__file__).resolve()}
    found = []
    for folder in ("habla_ls", "sync", "training", "ml_backend", "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.resolve() in own:
                continue
            for literal in _string_literals(path):
                text = f" {normalise(literal)} "
                found += [f"{path.relative_to(ROOT)}: {r!r}" for r in regression if f" {r} " in text]
    assert not found, found


def test_held_out_voices_never_make_training_audio() -> None:
    from habla_ls.demo import demo_voices

    make_corpus = load_bench_script("quality/make_corpus.py", "make_corpus_voices")
    active_learning = load_bench_script("active_learning/run.py", "active_learning_voices")
    for family in (KOKORO, ESPEAK):
        held_out = HELD_OUT_VOICES[family]
        assert len(held_out) >= 2 and not set(held_out) & set(TRAINING_VOICES[family])
        # No training voice, blends included, contains a held-out one.
        assert not [v for v in TRAINING_VOICES[family] if is_held_out(family, v)]
        assert not [v for v in demo_voices(family).values() if is_held_out(family, v)]
        defaults = make_corpus.default_voices(family)
        assert not [v for v in defaults["train"] if is_held_out(family, v)]
        assert defaults["test"] == held_out  # the benchmarks test on voices nothing trained on
    # The regression set speaks with held-out voices only.
    assert all(is_held_out(c.family, c.voice) for c in rc.plan_regression_set((KOKORO, ESPEAK)))
    # The active-learning benchmark refuses a pool spoken by a held-out voice (plain names of older corpora too).
    pool = [{"speaker": "kokoro:jf_alpha"}, {"speaker": "kokoro:jf_alpha+jm_kumo"}, {"speaker": "es-419"}]
    assert active_learning.held_out_speakers(pool) == ["es-419", "kokoro:jf_alpha+jm_kumo"]


@needs_espeak
def test_make_corpus_and_sample_voices_refuse_held_out_training_voices(tmp_path: Path) -> None:
    from habla_ls.sample_recordings import espeak_synthesizer, kokoro_synthesizer

    make_corpus = load_bench_script("quality/make_corpus.py", "make_corpus_refuse")
    args = ["--out", str(tmp_path / "c"), "--backend", "espeak", "--train-clips", "2", "--test-sentences", "0"]
    refused = CliRunner().invoke(make_corpus.main, [*args, "--train-voices", "es,es-419"])
    assert refused.exit_code != 0 and "es-419: held out for the standard-Spanish regression set" in refused.output
    assert not (tmp_path / "c" / "train").exists()
    with pytest.raises(ValueError, match="es\\+m3: held out"):
        espeak_synthesizer(["alumno"], voices={"alumno": "es+m3"})
    with pytest.raises(ValueError, match="jf_alpha\\+jm_kumo: held out"):
        kokoro_synthesizer(["alumno"], voices={"alumno": "jf_alpha+jm_kumo"})


def test_plan_covers_both_families_every_held_out_voice_and_quiet_speech() -> None:
    plans = rc.plan_regression_set((KOKORO, ESPEAK))
    assert len(plans) >= rc.MIN_CLIPS
    assert len({c.segment_key for c in plans}) == len(plans)
    for family in (KOKORO, ESPEAK):
        mine = [c for c in plans if c.family == family]
        # every regression sentence once per family
        assert sorted(c.sentence_id for c in mine) == sorted(s.id for s in REGRESSION)
        for voice in HELD_OUT_VOICES[family]:
            levels = Counter(c.level for c in mine if c.voice == voice)
            assert levels[rc.QUIET] == sum(levels.values()) // rc.QUIET_EVERY and levels[rc.NORMAL] > levels[rc.QUIET]
    for clip in plans:
        assert clip.speaker == f"{clip.family}:{clip.voice}" and voice_sets.family_of(clip.speaker) == clip.family
        assert clip.session == f"regression-{clip.family}-{clip.level}"
        assert clip.segment_key == f"{clip.session}/{clip.filename}"
    # Different voices are quiet on different sentences, so quiet speech covers more of the set.
    quiet = [c.sentence_id for c in plans if c.level == rc.QUIET]
    assert len(set(quiet)) == len(quiet)


def test_without_kokoro_espeak_alone_still_gives_enough_clips_and_says_so() -> None:
    plans = rc.plan_regression_set((ESPEAK,))
    assert len(plans) >= rc.MIN_CLIPS and {c.family for c in plans} == {ESPEAK}
    assert {c.voice for c in plans} == set(HELD_OUT_VOICES[ESPEAK])
    # the gate's first-line note reads the families from the rows' speakers
    from training.paired_sets import espeak_only

    assert espeak_only([{"speaker": c.speaker} for c in plans])
    assert not espeak_only([{"speaker": c.speaker} for c in rc.plan_regression_set((KOKORO, ESPEAK))])
    expected = (KOKORO, ESPEAK) if kokoro_installed() else (ESPEAK,)
    assert {c.family for c in rc.plan_regression_set()} == set(expected)


def _subset(families: tuple[str, ...]) -> list[rc.RegressionClip]:
    """One normal and one quiet clip per family: the full set is built once per machine, not per test."""
    plans = rc.plan_regression_set(families)
    picked = []
    for family in families:
        for level in (rc.NORMAL, rc.QUIET):
            picked.append(next(c for c in plans if c.family == family and c.level == level))
    return picked


@needs_espeak
def test_a_subset_is_synthesised_once_then_copied_from_the_machine_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HABLA_LS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(rs, "_noted_espeak_only", False)
    families = (KOKORO, ESPEAK) if kokoro_installed() else (ESPEAK,)
    plans = _subset(families)

    with caplog.at_level(logging.WARNING, logger=rs.__name__):
        first = rs.build_regression_set(tmp_path / "a" / "datasets", plans)
    assert first.synthesised == len(plans) and not first.from_cache and first.missing == []
    assert (rs.ESPEAK_ONLY_NOTE in caplog.text) == (families == (ESPEAK,))
    assert first.manifest == tmp_path / "a" / "datasets" / "regression" / "manifest.jsonl"
    rows = [json.loads(line) for line in first.manifest.read_text().splitlines()]
    assert len(rows) == first.clips == len(plans)
    for row, clip in zip(rows, plans, strict=True):
        assert set(row) >= {"audio_path", "transcript", "duration", "speaker", "session", "notes", "segment_key"}
        assert row["transcript"] == clip.text and row["speaker"] == clip.speaker and row["session"] == clip.session
        assert Path(row["audio_path"]).parent == first.manifest.parent
        info = probe(row["audio_path"])
        assert info.sample_rate == SAMPLE_RATE and info.channels == 1
        assert row["duration"] == pytest.approx(info.duration, abs=0.01) and 1.0 < row["duration"] < 10
        # "quiet" is what the gate measures from the audio, not a label
        loudness = rms_dbfs(decode(row["audio_path"]))
        assert (loudness < DEFAULT_QUIET_DBFS) == (clip.level == rc.QUIET), (row["audio_path"], loudness)

    second = rs.build_regression_set(tmp_path / "b" / "datasets", plans)
    assert second.from_cache and second.synthesised == 0 and second.content_id == first.content_id
    rows_b = [json.loads(line) for line in second.manifest.read_text().splitlines()]
    assert [r["sha256"] for r in rows_b] == [r["sha256"] for r in rows]
    assert all(Path(r["audio_path"]).is_relative_to(tmp_path / "b") for r in rows_b)

    # A pruned copy is made whole again from the cache.
    Path(rows[0]["audio_path"]).unlink()
    again = rs.build_regression_set(tmp_path / "a" / "datasets", plans)
    assert again.from_cache and again.synthesised == 0 and Path(rows[0]["audio_path"]).is_file()

    # Other sentences or voices make another set (a new content id), not a stale copy.
    other = rs.build_regression_set(tmp_path / "a" / "datasets", plans[-1:])
    assert other.content_id != first.content_id and other.synthesised == 1 and other.clips == 1
    assert len(other.manifest.read_text().splitlines()) == 1
    leftovers = [p.name for p in (tmp_path / "a" / "datasets").iterdir() if ".building" in p.name or ".old" in p.name]
    assert leftovers == []  # nothing left half-built


@needs_espeak
def test_a_clip_that_cannot_be_made_is_named_and_the_rest_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HABLA_LS_CACHE", str(tmp_path / "cache"))
    good = rc.plan_regression_set((ESPEAK,))[0]
    bad = rc.RegressionClip("R999", "Una frase cualquiera.", ESPEAK, "no-such-voice", rc.NORMAL)
    with caplog.at_level(logging.WARNING, logger=rs.__name__):
        build = rs.build_regression_set(tmp_path / "datasets", [good, bad])
    assert build.clips == 1 and build.synthesised == 1
    assert build.missing == [f"regression clip {bad.filename}: skipped: unknown espeak-ng voice 'no-such-voice'"]
    assert build.missing[0] in caplog.text
    assert [json.loads(line)["segment_key"] for line in build.manifest.read_text().splitlines()] == [good.segment_key]
    # An incomplete set is neither cached nor trusted: the next run tries again.
    assert not rs._is_cached(build.content_id)
    again = rs.build_regression_set(tmp_path / "datasets", [good, bad])
    assert again.synthesised == 1 and not again.from_cache and len(again.missing) == 1


def test_a_user_manifest_replaces_or_joins_the_generated_set(tmp_path: Path) -> None:
    datasets = tmp_path / "datasets"
    (tmp_path / "mine").mkdir()
    clip = tmp_path / "mine" / "ana_001.wav"
    clip.write_bytes(b"RIFF")  # the rows are only listed here; evaluation decodes them
    user = tmp_path / "mine" / "manifest.jsonl"
    user.write_text(
        json.dumps({"audio_path": "ana_001.wav", "transcript": "Buenas tardes.", "duration": 1.0, "speaker": "ana",
                    "session": "grabacion", "notes": ""}) + "\n"
        + "{not json\n"
    )
    assert rs.ensure_regression_set(datasets, user) == user
    with pytest.raises(rc.RegressionSetError, match="regression manifest not found"):
        rs.ensure_regression_set(datasets, tmp_path / "nope.jsonl")

    default = datasets / "generated.jsonl"
    datasets.mkdir()
    default.write_text(json.dumps({"audio_path": "/x/R001.wav", "transcript": "Hola.", "duration": 1.0,
                                   "speaker": "kokoro:jm_kumo", "session": "regression-kokoro-normal", "notes": ""}) + "\n")
    joined = rs.join_manifests(datasets / rs.JOINED_SUBDIR, default, user)
    rows = [json.loads(line) for line in joined.read_text().splitlines()]
    assert [r["speaker"] for r in rows] == ["kokoro:jm_kumo", "ana"]
    assert rows[1]["audio_path"] == str(clip)  # relative paths resolved against the user's manifest
    assert voice_sets.family_of(rows[1]["speaker"]) == voice_sets.USER_FAMILY
    before = joined.stat().st_mtime_ns
    assert rs.join_manifests(datasets / rs.JOINED_SUBDIR, default, user) == joined
    assert joined.stat().st_mtime_ns == before  # unchanged rows: the file is left alone


@pytest.mark.slow
@needs_espeak
def test_the_default_set_has_80_clips_both_families_and_quiet_speech(tmp_path: Path) -> None:
    """The real default set (made once per machine into the habla-ls cache, then copied), joined to a user's."""
    user = tmp_path / "mine.jsonl"
    user.write_text(json.dumps({"audio_path": str(tmp_path / "a.wav"), "transcript": "Buenas tardes.",
                                "duration": 1.0, "speaker": "ana", "session": "s", "notes": ""}) + "\n")
    joined = rs.ensure_regression_set(tmp_path / "datasets", user, include_default=True)
    generated = tmp_path / "datasets" / "regression" / "manifest.jsonl"
    rows = [json.loads(line) for line in generated.read_text().splitlines()]
    assert len(rows) >= rc.MIN_CLIPS
    families = {voice_sets.family_of(r["speaker"]) for r in rows}
    assert families == ({KOKORO, ESPEAK} if kokoro_installed() else {ESPEAK})
    assert {r["session"].rsplit("-", 1)[1] for r in rows} == {rc.NORMAL, rc.QUIET}
    assert all(r["session"] == f"regression-{voice_sets.family_of(r['speaker'])}-{r['session'].rsplit('-', 1)[1]}"
               for r in rows)
    assert all(is_held_out(*r["speaker"].split(":", 1)) for r in rows)
    assert {r["transcript"] for r in rows} == {s.text for s in REGRESSION}
    joined_rows = joined.read_text().splitlines()
    assert len(joined_rows) == len(rows) + 1 and json.loads(joined_rows[-1])["speaker"] == "ana"
    assert rs.ensure_regression_set(tmp_path / "datasets") == generated
