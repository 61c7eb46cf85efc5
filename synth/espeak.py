"""Spanish speech from ``espeak-ng -v es``: robotic but fast and fully offline (tests, quick demos).

Variants change the voice so a test set is not one speaker: ``voice`` ("es", "es-419", or a variant
such as "es+f3" for a female-sounding one), ``speed`` (words per minute), ``pitch`` (0-99) and
``gain_db`` (quiet classroom speakers are simulated with a negative gain).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from ml_backend.audio import SAMPLE_RATE, decode

ESPEAK = "espeak-ng"


class EspeakError(RuntimeError):
    pass


@dataclass(frozen=True)
class EspeakVoice:
    voice: str = "es"
    speed: int = 150  # words per minute (espeak's default is 175: a little slower is clearer)
    pitch: int = 50
    gain_db: float = 0.0


# A few distinct voices for "several speakers".
VOICES = (
    EspeakVoice("es", 150, 45),
    EspeakVoice("es+f3", 140, 60),
    EspeakVoice("es-419", 160, 40),
    EspeakVoice("es+m3", 135, 35),
)


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def synthesize(text: str, voice: EspeakVoice | None = None) -> np.ndarray:
    """``text`` spoken in Spanish: 16 kHz mono float32 in [-1, 1]."""
    voice = voice or EspeakVoice()
    if not espeak_available():
        raise EspeakError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    if not text.strip():
        raise EspeakError("nothing to say: empty text")
    cmd = [ESPEAK, "-v", voice.voice, "-s", str(voice.speed), "-p", str(voice.pitch), "--stdout", text]
    try:
        result = subprocess.run(cmd, capture_output=True, check=True, timeout=60)
    except subprocess.CalledProcessError as exc:
        raise EspeakError(f"espeak-ng failed for voice {voice.voice!r}: {exc.stderr.decode(errors='replace').strip()[:200]}") from None
    samples = decode(result.stdout, sample_rate=SAMPLE_RATE)
    if voice.gain_db:
        samples = samples * np.float32(10 ** (voice.gain_db / 20))
    return np.clip(samples, -1.0, 1.0).astype(np.float32)
