"""Spanish test audio (espeak-ng) and generated Habla recordings dirs."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from habla_ls.sample_recordings import SampleRecordings, write_sample_recordings
from synth.espeak import EspeakVoice, synthesize

_recordings_counter = itertools.count(1)


@pytest.fixture(scope="session")
def espeak_clip() -> Callable[..., np.ndarray]:
    """``espeak_clip(text, voice="es", speed=150, pitch=50, gain_db=0.0)`` -> 16 kHz float32 (cached)."""
    cache: dict[tuple, np.ndarray] = {}

    def make(text: str = "Buenos días a todos.", *, voice: str = "es", speed: int = 150, pitch: int = 50, gain_db: float = 0.0) -> np.ndarray:
        key = (text, voice, speed, pitch, gain_db)
        if key not in cache:
            cache[key] = synthesize(text, EspeakVoice(voice, speed, pitch, gain_db))
        return cache[key].copy()

    return make


@pytest.fixture
def make_recordings(tmp_path: Path) -> Callable[..., SampleRecordings]:
    """``make_recordings(root=None, **options)``: a Habla recordings dir (see write_sample_recordings)."""

    def make(root: Path | None = None, **options) -> SampleRecordings:
        return write_sample_recordings(root or tmp_path / f"recordings-{next(_recordings_counter)}", **options)

    return make
