"""Reading and checking audio: everything the product decodes goes through here.

Whisper wants 16 kHz mono float32. Habla writes exactly that as s16 WAV, but users also drop in other
files, so anything soundfile reads is accepted and resampled; what cannot be used raises
:class:`AudioError` with a one-line reason.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# numpy and soundfile are imported where samples are touched: `sync push` with nothing new and `sync
# pull` import this module (for AudioError and the archive's constants) but decode nothing, and the
# two imports are ~0.1 s of their run.

SAMPLE_RATE = 16_000
MAX_SECONDS = 30.0  # Whisper's window: longer segments cannot be labelled or trained as one clip


class AudioError(ValueError):
    """Audio that cannot be used; ``str()`` is a one-line reason."""


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    subtype: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def probe(source: str | Path | bytes) -> AudioInfo:
    """Header facts without decoding the samples."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(source) if isinstance(source, bytes) else str(source))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"unreadable audio ({_short(exc)})") from exc
    return AudioInfo(info.samplerate, info.channels, info.frames, info.subtype)


def resample(samples: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling with a windowed-sinc low-pass (good enough for speech, no scipy needed)."""
    import numpy as np

    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    g = gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    if up > 64 or down > 64:
        # Odd rates: linear interpolation is adequate for ASR and keeps the filter small.
        n_out = int(round(len(samples) * to_rate / from_rate))
        x_old = np.arange(len(samples)) / from_rate
        x_new = np.arange(n_out) / to_rate
        return np.interp(x_new, x_old, samples).astype(np.float32)
    cutoff = 1.0 / max(up, down)
    half = 10 * max(up, down)
    taps = np.arange(-half, half + 1)
    kernel = cutoff * np.sinc(cutoff * taps) * np.kaiser(len(taps), 5.0)
    kernel *= up / kernel.sum()
    upsampled = np.zeros(len(samples) * up, dtype=np.float64)
    upsampled[::up] = samples
    filtered = np.convolve(upsampled, kernel, mode="same")
    return filtered[::down].astype(np.float32)


def to_mono(samples: np.ndarray) -> np.ndarray:
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def decode(source: str | Path | bytes, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Any audio file (path or bytes) -> mono float32 at ``sample_rate``."""
    import numpy as np
    import soundfile as sf

    try:
        data, rate = sf.read(io.BytesIO(source) if isinstance(source, bytes) else str(source), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioError(f"unreadable audio ({_short(exc)})") from exc
    return resample(to_mono(np.asarray(data)), rate, sample_rate)


def load_checked(source: str | Path | bytes, *, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Decode and refuse what cannot be a training or labelling clip: empty, silent or too long."""
    samples = decode(source)
    duration = len(samples) / SAMPLE_RATE
    if len(samples) == 0:
        raise AudioError("empty audio (0 samples)")
    if duration > max_seconds:
        raise AudioError(f"audio too long ({duration:.1f} s > {max_seconds:.0f} s)")
    return samples


def encode_wav(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV bytes (Habla's own format)."""
    import numpy as np
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[-1][:160] if str(exc).strip() else type(exc).__name__


def rms_dbfs(samples: np.ndarray, *, frame: int = 480) -> float:
    """Active speech level in dBFS: the RMS of the louder half of 30-ms frames.

    A plain RMS over the whole segment would call a loud speaker with long pauses "quiet"; taking the
    louder half of the frames measures the voice, not the silence around it.
    """
    import numpy as np

    samples = np.asarray(samples, dtype=np.float64)
    if samples.size == 0:
        return -math.inf
    n_frames = max(1, samples.size // frame)
    frames = samples[: n_frames * frame].reshape(n_frames, -1) if samples.size >= frame else samples[None, :]
    power = np.sort((frames**2).mean(axis=1))[::-1]
    loud = power[: max(1, len(power) // 2)]
    mean_power = float(loud.mean())
    return 10.0 * math.log10(mean_power) if mean_power > 0 else -math.inf
