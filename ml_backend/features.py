"""What Whisper sees of a clip: the audio geometry of its 30-s window and the log-mel features of a clip."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30.0
WINDOW_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)
HOP_SAMPLES = 160  # one log-mel frame
WINDOW_FRAMES = 1500  # encoder frames in a 30-s window


@functools.lru_cache(maxsize=4)
def feature_extractor(n_mels: int) -> Any:
    """faster-whisper's log-mel extractor for ``n_mels`` bins (built once per size)."""
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=n_mels)


def log_mel_features(clips: Sequence[np.ndarray], n_mels: int = 80) -> np.ndarray:
    """Whisper's input for each clip (``[len(clips), n_mels, 3000]`` float32), computed as faster-whisper's
    ``transcribe()`` does (and openai-whisper's): log-mel of the clip alone, normalised to its own peak,
    then padded to 30 s with zeros. transformers' ``WhisperFeatureExtractor`` pads the *audio* first, so its
    padding frames are "peak - 8 dB" instead of 0; on low-confidence audio that alone changes words. Both
    runtimes are fed this, so a model gives the same words on transformers and as a CTranslate2 export.
    """
    from faster_whisper.audio import pad_or_trim

    extractor = feature_extractor(n_mels)
    # faster-whisper drops the last frame (it belongs to the 160-sample tail padding) before padding to 3000.
    return np.stack([pad_or_trim(extractor(np.asarray(c, dtype=np.float32))[:, :-1]) for c in clips]).astype(np.float32)
