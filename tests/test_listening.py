"""The page's loudness-normalised copy of quiet clips; the archived original is never changed."""

from __future__ import annotations

import hashlib

import numpy as np

from ml_backend.audio import decode, encode_wav
from sync.listening import active_level_dbfs, ensure_listening_copy, gain_text, listening_gain_db


def _speech(espeak_clip, gain_db: float) -> np.ndarray:
    return (espeak_clip("Abrid el libro por la página treinta y dos.") * np.float32(10 ** (gain_db / 20))).astype(np.float32)


def test_a_quiet_clip_gets_an_amplified_copy_and_the_original_stays(espeak_clip, tmp_path):
    loud = _speech(espeak_clip, 0.0)
    quiet = _speech(espeak_clip, -20.0)
    archived = tmp_path / "ab" / "abcd.wav"
    archived.parent.mkdir()
    archived.write_bytes(encode_wav(quiet))
    before = hashlib.sha256(archived.read_bytes()).hexdigest()

    played, gain = ensure_listening_copy(archived)

    assert played != archived and played.name == "abcd.listen.wav"
    assert hashlib.sha256(archived.read_bytes()).hexdigest() == before
    copy = decode(played)
    # Brought up to a speaking level, without clipping.
    assert gain >= 15
    assert abs(active_level_dbfs(copy) - active_level_dbfs(decode(archived)) - gain) < 0.5
    assert np.max(np.abs(copy)) < 0.95
    assert "louder" in gain_text(gain)
    # A clip already at a speaking level is played as recorded.
    assert listening_gain_db(loud) == 0.0 or listening_gain_db(loud) < listening_gain_db(quiet) - 15
    assert gain_text(0.0) == ""


def test_silence_is_not_amplified(tmp_path):
    archived = tmp_path / "00" / "silence.wav"
    archived.parent.mkdir()
    archived.write_bytes(encode_wav(np.zeros(16000, dtype=np.float32)))
    assert ensure_listening_copy(archived) == (archived, 0.0)
