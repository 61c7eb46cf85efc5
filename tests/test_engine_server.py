"""The engine's guarantees through the real backend (uvicorn subprocess, real HTTP, whisper-base).

The backend itself decodes each audio file once (sha256 of its bytes) and caches what it decoded, so
these tests send the same samples as WAV files that differ only in their metadata: the backend sees
distinct files, misses its cache, and the engine gets identical audio, or the same clips in another order.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from ml_backend.audio import decode
from tests.backend_process import BackendProcess

pytestmark = pytest.mark.quality

SENTENCES = [
    ("Mañana tenemos un examen de ciencias naturales.", "es", 0.0),
    ("Buenos días a todos.", "es+f3", 0.0),
    ("Abrid el libro por la página veinte.", "es-419", 0.0),
    ("¿Quién ha terminado el ejercicio?", "es+m3", 0.0),
    ("Hoy vamos a hablar de la historia de Andalucía.", "es", 0.0),
    ("Los alumnos escriben en la pizarra.", "es", -50.0),  # a quiet student: lost in a packed window
    ("Sacad el cuaderno de matemáticas.", "es+f3", -20.0),
]


def wav_variant(samples: np.ndarray, tag: str) -> bytes:
    """16-bit WAV of ``samples`` whose bytes (and so sha256) depend on ``tag``: a title in its INFO chunk."""
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", 16000, 1, "PCM_16", format="WAV") as out:
        out.title = tag
        out.write(np.clip(samples, -1.0, 1.0))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def base_backend(tmp_path_factory, whisper_base_ct2_dir):
    home = tmp_path_factory.mktemp("engine-server-home")
    backend = BackendProcess(
        # The served defaults (beam 5, every fallback temperature, no token cap), on whisper-base.
        {"HABLA_LS_HOME": str(home), "HABLA_LS_MODEL": str(whisper_base_ct2_dir), "HABLA_LS_DEVICE": "cpu",
         "LABEL_STUDIO_URL": "http://127.0.0.1:9", "HABLA_LS_BEAM_SIZE": "5",
         "HABLA_LS_TEMPERATURES": "0,0.2,0.4,0.6,0.8,1.0", "HABLA_LS_MAX_NEW_TOKENS": ""},
        tmp_path_factory.mktemp("engine-server-log") / "backend.log",
    ).wait_ready()
    yield backend, home
    backend.stop()


def _task(home: Path, wav: bytes, task_id: int) -> dict:
    sha = hashlib.sha256(wav).hexdigest()
    path = home / "archive" / sha[:2] / f"{sha}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav)
    return {"id": task_id, "data": {"audio": f"/data/upload/{task_id}.wav", "sha256": sha}}


def _predict(backend: BackendProcess, tasks: list[dict]) -> list[tuple[str, float]]:
    response = httpx.post(backend.url + "/predict", json={"tasks": tasks}, timeout=300)
    response.raise_for_status()
    results = response.json()["results"]
    assert len(results) == len(tasks) and all("error" not in r for r in results), results
    return [(r["result"][0]["value"]["text"][0], r["score"]) for r in results]


def _decoded_clips(backend: BackendProcess) -> int:
    return httpx.get(backend.url + "/health", timeout=10).json()["predictions"]["decoded_clips"]


def test_copies_of_one_clip_in_one_request_get_the_same_text(base_backend, espeak_clip):
    backend, home = base_backend
    samples = espeak_clip(SENTENCES[0][0])
    variants = [wav_variant(samples, f"copy {i}") for i in range(9)]
    assert len({hashlib.sha256(v).hexdigest() for v in variants}) == 9
    assert all(np.array_equal(decode(v), decode(variants[0])) for v in variants)

    (alone,) = _predict(backend, [_task(home, variants[0], 1)])
    assert alone[0]
    # The same task twice (the backend decodes it once), then as two and five distinct files.
    twice = _predict(backend, [_task(home, variants[1], 2)] * 2)
    before = _decoded_clips(backend)
    two = _predict(backend, [_task(home, v, 10 + i) for i, v in enumerate(variants[2:4])])
    five = _predict(backend, [_task(home, v, 20 + i) for i, v in enumerate(variants[4:9])])
    assert _decoded_clips(backend) - before == 2 + 5  # the backend handed every copy to the engine
    for answers in (twice, two, five):
        assert answers == [alone] * len(answers)


def test_the_same_clips_in_any_order_get_the_same_texts(base_backend, espeak_clip):
    backend, home = base_backend
    audio = [espeak_clip(text, voice=voice, gain_db=gain) for text, voice, gain in SENTENCES]

    def request(order: list[int], tag: str) -> dict[int, tuple[str, float]]:
        tasks = [_task(home, wav_variant(audio[i], f"{tag} {i}"), 100 * len(tag) + i) for i in order]
        before = _decoded_clips(backend)
        answers = _predict(backend, tasks)
        assert _decoded_clips(backend) - before == len(order)  # no cache hit: the engine decoded them all
        return {i: answer for i, answer in zip(order, answers, strict=True)}

    order = list(range(len(audio)))
    first = request(order, "in order")
    assert all(text for text, _score in first.values())  # the quiet student too
    assert "pizarra" in first[5][0].lower()
    assert request(order[::-1], "reversed") == first
    random.Random(3).shuffle(order)
    assert request(order, "shuffled") == first
