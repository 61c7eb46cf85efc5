"""Helpers for the training tests: small Habla-like homes of espeak-ng clips (not fixtures: plain functions)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ml_backend.audio import decode, encode_wav
from training.regression_set import STANDARD_SENTENCES, espeak

SENTENCES = (
    "hola a todos",
    "abrid el libro",
    "buenos días",
    "vamos a leer",
    "muy bien hecho",
    "silencio por favor",
    "la pizarra blanca",
    "el examen es mañana",
    "sacad el cuaderno",
    "quién falta hoy",
    "tenemos recreo",
    "hasta mañana",
)


@functools.cache
def spoken(text: str, speed: int = 190) -> bytes:
    """16 kHz s16 WAV bytes of espeak-ng saying ``text`` (cached for the test session)."""
    return encode_wav(decode(espeak(text, speed=speed)))


def make_home(home: Path, sessions: int = 6, per_session: int = 2, *, sentences=SENTENCES) -> Path:
    """A HABLA_LS_HOME with an archive of clips and a pull manifest; returns the manifest path."""
    rows = []
    for s in range(sessions):
        session = f"clase_{s:02d}_20250301_09{s:02d}00"
        for i in range(per_session):
            text = sentences[(s * per_session + i) % len(sentences)]
            path = home / "archive" / session / f"segment_{i:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(spoken(text))
            rows.append(
                {
                    "audio_path": str(path),
                    "transcript": text,
                    "duration": 1.0,
                    "speaker": "profe" if s % 2 else "alumna",
                    "session": session,
                    "notes": "",
                    "segment_key": f"{session}/{path.name}",
                }
            )
    manifest = home / "datasets" / "manifest.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return manifest


def make_regression_manifest(directory: Path, count: int = 3) -> Path:
    """A small standard-Spanish regression manifest (the default set has 24 clips: too slow for unit tests)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(STANDARD_SENTENCES[:count]):
        path = directory / f"standard_{i:03d}.wav"
        path.write_bytes(spoken(text, speed=165))
        rows.append({"audio_path": str(path), "transcript": text, "session": "regression", "speaker": "espeak"})
    manifest = directory / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return manifest
