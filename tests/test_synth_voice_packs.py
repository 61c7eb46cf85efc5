"""Kokoro v1.0's other voice packs (npm kokoro-js): install from a checked tarball, read, and speak with them.

No test fetches anything: tarballs are built here, with their own digest passed as the expected one.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from synth import kokoro, voice_packs
from synth.voices import HELD_OUT_VOICES, KOKORO, MORE_TRAINING_VOICES, is_held_out


def _pack(seed: int) -> bytes:
    return np.random.default_rng(seed).normal(size=(voice_packs.PACK_ROWS, voice_packs.STYLE_DIM)).astype("<f4").tobytes()


def _tarball(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_packs_install_from_a_checked_tarball_and_nothing_else_is_extracted(tmp_path: Path) -> None:
    tarball = tmp_path / "kokoro-js.tgz"
    digest = _tarball(tarball, {
        "package/voices/em_test.bin": _pack(1),
        "package/voices/ef_test.bin": _pack(2),
        "package/README.md": b"not a voice",
        "package/voices/../../escape.bin": _pack(3),  # a path that would leave the target
    })
    target = tmp_path / "voices"

    assert voice_packs.install_from_tarball(tarball, target, expected_sha256=digest) == ["ef_test", "em_test"]
    assert sorted(p.name for p in target.iterdir()) == ["ef_test.bin", "em_test.bin"]
    assert not (tmp_path / "escape.bin").exists()
    packs = voice_packs.read_voice_packs(target)
    assert sorted(packs) == ["ef_test", "em_test"]
    np.testing.assert_array_equal(packs["em_test"], np.frombuffer(_pack(1), dtype="<f4").reshape(510, 256))


def test_a_tarball_that_is_not_the_pinned_one_installs_nothing(tmp_path: Path) -> None:
    tarball = tmp_path / "kokoro-js.tgz"
    _tarball(tarball, {"package/voices/em_test.bin": _pack(1)})
    target = tmp_path / "voices"
    with pytest.raises(voice_packs.VoicePackError, match=r"kokoro-js\.tgz: sha256 .* is not the pinned kokoro-js 1\.2\.1"):
        voice_packs.install_from_tarball(tarball, target)  # the real pin
    assert not target.exists() or not any(target.iterdir())

    # The CLI says the same in one line and exits 1.
    assert voice_packs.main(["--from-tarball", str(tarball), "--target", str(target)]) == 1


def test_a_truncated_pack_is_skipped_by_name_and_the_others_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "em_good.bin").write_bytes(_pack(1))
    (tmp_path / "em_cut.bin").write_bytes(_pack(2)[:1000])
    assert list(voice_packs.read_voice_packs(tmp_path)) == ["em_good"]
    assert "em_cut.bin: not a Kokoro voice pack (1000 bytes" in capsys.readouterr().err
    assert voice_packs.read_voice_packs(tmp_path / "missing") == {}


def test_more_training_voices_hold_out_the_regression_voices_and_are_half_male() -> None:
    voices = MORE_TRAINING_VOICES[KOKORO]
    assert not any(is_held_out(KOKORO, voice) for voice in voices)
    assert set(HELD_OUT_VOICES[KOKORO]).isdisjoint(voices)
    male = [v for v in voices if all(part.split("*")[0][1] == "m" for part in v.split("+"))]
    assert len(male) == len(voices) // 2


needs_kokoro = pytest.mark.skipif(
    not kokoro.kokoro_installed() or shutil.which("espeak-ng") is None, reason="the synth extra (Kokoro) is not installed"
)


@pytest.mark.slow
@needs_kokoro
def test_an_installed_pack_is_a_voice_kokoro_speaks_and_blends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = kokoro.load_kokoro()
    # The pack of a shipped voice under a new name: it must speak exactly as that voice does.
    (tmp_path / "xm_copy.bin").write_bytes(shipped.style("jf_alpha").astype("<f4").tobytes())
    (tmp_path / "jf_alpha.bin").write_bytes(_pack(7))  # a pack may not replace a shipped voice
    monkeypatch.setenv(voice_packs.VOICES_ENV, str(tmp_path))
    kokoro.load_kokoro.cache_clear()
    try:
        model = kokoro.load_kokoro()
        assert "xm_copy" in model.voices and "xm_copy" not in shipped.voices
        np.testing.assert_array_equal(model.style("jf_alpha"), shipped.style("jf_alpha"))
        phonemes = kokoro.phonemize("Buenos días, abrid los libros.")
        np.testing.assert_array_equal(model.speak_phonemes(phonemes, "xm_copy").audio,
                                      model.speak_phonemes(phonemes, "jf_alpha").audio)
        assert model.has_voice("xm_copy+jf_tebukuro")
    finally:
        kokoro.load_kokoro.cache_clear()


def _make_corpus():
    from tests.bench_scripts import load_bench_script

    return load_bench_script("quality/make_corpus.py", "make_corpus")


def test_make_corpus_more_voices_goes_with_kokoro_only(tmp_path: Path) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(_make_corpus().main, ["--out", str(tmp_path), "--more-voices", "--backend", "espeak"])
    assert result.exit_code == 2 and "--more-voices" in result.output and "kokoro backend" in result.output
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@needs_kokoro
def test_make_corpus_more_voices_without_the_packs_says_how_to_get_them(tmp_path: Path) -> None:
    from click.testing import CliRunner

    kokoro.load_kokoro.cache_clear()  # the test session's packs dir is empty: only the five shipped voices
    result = CliRunner().invoke(_make_corpus().main, ["--out", str(tmp_path), "--more-voices"])
    assert result.exit_code == 2
    assert "unknown voice(s) ef_dora, em_alex" in result.output and "make kokoro-voices" in result.output
    assert "Invalid value for --more-voices" in result.output  # the option the user gave, not --train-voices
    assert not (tmp_path / "train").exists()
