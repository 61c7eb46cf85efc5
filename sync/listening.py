"""What the labelling page plays: a loudness-normalised copy of each quiet archived clip.

A quiet student recorded 20 dB below the teacher draws an almost flat waveform and is hard to hear, so the
page plays (and draws) a copy brought up to a speaking level, and says by how much it was amplified. The
archive's original is never changed: it is what training reads and what every sha256 names. The copy
lies beside it (``<sha256>.listen.wav``), inside the archive dir that Label Studio's storage serves, and is
made only when the clip needs at least :data:`MIN_GAIN_DB`; louder clips are played as recorded.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ml_backend.audio import SAMPLE_RATE, decode, encode_wav, rms_dbfs
from sync.archive import Archive
from sync.labelling_config import DATA_AUDIO, DATA_LOUDNESS
from sync.served_audio import audio_url

TARGET_DBFS = -20.0  # active speech level of the copy: a teacher at the front of the class
PEAK_DBFS = -1.0  # the copy's loudest sample stays below this: amplifying never clips
MIN_GAIN_DB = 6.0  # quieter than this: the page plays the original
MAX_GAIN_DB = 40.0  # noise in a near-silent clip is not worth 40 dB more
LISTENING_SUFFIX = ".listen.wav"


def listening_gain_db(samples: np.ndarray) -> float:
    """How many dB the page's copy is amplified by (0: the original is played): up to the target level,
    never past the peak limit, never attenuated."""
    level = rms_dbfs(samples)
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    if not math.isfinite(level) or peak <= 0:
        return 0.0
    headroom = PEAK_DBFS - 20.0 * math.log10(peak)
    gain = min(TARGET_DBFS - level, headroom, MAX_GAIN_DB)
    return round(gain, 1) if gain >= MIN_GAIN_DB else 0.0


def listening_path(archived: Path) -> Path:
    """Where the copy of the archived clip ``<sha256>.wav`` lies."""
    return archived.with_name(archived.name.removesuffix(".wav") + LISTENING_SUFFIX)


def ensure_listening_copy(archived: Path) -> tuple[Path, float]:
    """(the file the page should play, the gain in dB applied to it). Writes the copy once, atomically."""
    samples = decode(archived)
    gain = listening_gain_db(samples)
    if gain <= 0:
        return archived, 0.0
    target = listening_path(archived)
    if not target.is_file():
        louder = np.clip(samples * np.float32(10 ** (gain / 20)), -1.0, 1.0).astype(np.float32)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        tmp.write_bytes(encode_wav(louder, SAMPLE_RATE))
        os.replace(tmp, target)
    return target, gain


def gain_text(gain_db: float) -> str:
    """The page's line about the copy ("" when the original is played)."""
    return f"played {gain_db:.0f} dB louder than recorded (training uses the recording as it is)" if gain_db > 0 else ""


def page_audio(archive: Archive, sha256: str, document_root: Path) -> dict[str, Any]:
    """The task data of what the page plays: the audio URL (the louder copy's, for a quiet clip) and the
    line saying so. The copy lies beside the archived file, so it has the same path below the root."""
    played, gain = ensure_listening_copy(archive.path_for(sha256))
    relative = PurePosixPath(archive.relative_path(sha256, document_root)).with_name(played.name).as_posix()
    return {DATA_AUDIO: audio_url(relative), DATA_LOUDNESS: gain_text(gain)}
