"""The content-addressed archive: Habla's files copied as they are, others converted, bad audio refused."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ml_backend.audio import AudioError, encode_wav
from sync.archive import Archive


def _wav(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_habla_wav_is_stored_byte_for_byte_under_its_sha256(tmp_path: Path) -> None:
    data = encode_wav(_tone(1.5))
    clip = Archive(tmp_path / "archive").add_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert clip.sha256 == digest
    assert clip.path == tmp_path / "archive" / digest[:2] / f"{digest}.wav"
    assert clip.path.read_bytes() == data
    assert clip.duration == pytest.approx(1.5)
    assert not clip.converted and clip.note is None and not clip.already_there
    again = Archive(tmp_path / "archive").add_bytes(data)
    assert again.already_there and again.path == clip.path
    assert [p.name for p in clip.path.parent.iterdir()] == [clip.path.name]  # no temp files left


def test_other_rate_and_stereo_are_converted_but_named_by_the_original(tmp_path: Path) -> None:
    stereo = np.stack([_tone(2.0, 44100), _tone(2.0, 44100)], axis=1)
    data = _wav(stereo, 44100)
    clip = Archive(tmp_path).add_bytes(data)
    assert clip.sha256 == hashlib.sha256(data).hexdigest()
    assert clip.converted and clip.note == "resampled from 44100 Hz, downmixed from 2 channels"
    info = sf.info(str(clip.path))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.duration == pytest.approx(2.0, abs=0.01)


def test_float_wav_at_16k_is_converted_to_pcm16(tmp_path: Path) -> None:
    clip = Archive(tmp_path).add_bytes(_wav(_tone(1.0), subtype="FLOAT"))
    assert sf.info(str(clip.path)).subtype == "PCM_16"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_wav(np.zeros(0, dtype=np.float32)), "empty audio"),
        (_wav(_tone(31.0)), "audio too long (31.0 s > 30 s)"),
        (_wav(_tone(31.0, 8000), 8000), "audio too long"),
        (b"RIFF\x00\x00\x00\x00WAVEnot really", "unreadable audio"),
        (b"", "unreadable audio"),
        (_wav(np.zeros((1600, 4), dtype=np.float32)), "4 channels"),
    ],
)
def test_unusable_audio_is_refused_with_a_reason_and_nothing_stored(tmp_path: Path, data: bytes, reason: str) -> None:
    with pytest.raises(AudioError) as info:
        Archive(tmp_path / "a").add_bytes(data)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").rglob("*.wav"))


def test_truncated_wav_keeps_what_is_there(tmp_path: Path) -> None:
    data = encode_wav(_tone(1.0))
    clip = Archive(tmp_path).add_bytes(data[: 44 + 8000])  # header promises 1 s, 0.25 s written
    assert clip.duration == pytest.approx(0.25, abs=0.01)
    assert sf.info(str(clip.path)).frames == 4000


def test_unreadable_file_and_relative_path(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="unreadable file"):
        Archive(tmp_path).add_file(tmp_path / "missing.wav")
    archive = Archive(tmp_path / "root" / "home" / "archive")
    assert archive.relative_path("ab" * 32, tmp_path / "root") == f"home/archive/ab/{'ab' * 32}.wav"
    assert archive.relative_root(tmp_path / "root") == "home/archive"  # what every task URL starts with
    assert archive.relative_root(tmp_path / "root" / "home") == "archive"
    with pytest.raises(ValueError, match="not below Label Studio's document root"):
        archive.relative_path("ab" * 32, tmp_path / "elsewhere")
