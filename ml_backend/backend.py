"""What the backend does for its requests (:class:`Backend`, one per worker process): predictions,
webhook events and the counts ``/health`` reports.

``/predict`` decodes nothing twice: a task that already carries a prediction of the served version is
answered from it, else from the prediction cache (audio sha256 + version, shared with ``habla-ls round``,
see :mod:`ml_backend.prediction_cache`); the rest are transcribed in one engine batch (each distinct clip
once) and cached. A task whose audio is missing, corrupt or on a foreign host gets an entry with an
``error`` and no ``result`` (Label Studio stores nothing for it); its batch-mates are answered.

Hot swap: every request resolves ``models/CURRENT`` anew (a file read); a changed version is loaded and
served from then on, while requests already running finish on the engine they hold.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.config import BackendConfig
from ml_backend.decoding import DecodeOptions
from ml_backend.engine import Engine
from ml_backend.loading import load_engine, locate_model
from ml_backend.prediction_cache import (
    CachedPrediction,
    PredictionCache,
    cache_path,
    cached_prediction,
    model_fingerprint,
)
from ml_backend.task_audio import AudioFetcher, TaskAudioError
from ml_backend.training_queue import TrainingQueue

log = logging.getLogger("habla_ls.backend")

DEFAULT_FROM_NAME = "transcription"
DEFAULT_TO_NAME = "audio"
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED", "ANNOTATION_DELETED")


def _label_names(label_config: str | None) -> tuple[str, str]:
    """(TextArea name, Audio name) from the project's labelling config."""
    if not label_config:
        return DEFAULT_FROM_NAME, DEFAULT_TO_NAME
    textarea = re.search(r"<TextArea\b[^>]*\bname=\"([^\"]+)\"[^>]*>", label_config)
    to_name = re.search(r"<TextArea\b[^>]*\btoName=\"([^\"]+)\"", label_config)
    audio = re.search(r"<(?:Audio|AudioPlus)\b[^>]*\bname=\"([^\"]+)\"", label_config)
    return (
        textarea[1] if textarea else DEFAULT_FROM_NAME,
        to_name[1] if to_name else (audio[1] if audio else DEFAULT_TO_NAME),
    )


class Backend:
    """State shared by the requests of one worker process."""

    def __init__(self, config: BackendConfig):
        self.config = config
        self.fetcher = AudioFetcher(config)
        self.events: collections.Counter[str] = collections.Counter()
        self._events_lock = threading.Lock()
        # How each task of /predict was answered; /health shows it (and the tests count decodes with it).
        self.answers: collections.Counter[str] = collections.Counter()
        self._answers_lock = threading.Lock()
        self.cache = PredictionCache(cache_path(config.home))
        self.training = TrainingQueue(config.train_command, config.home)
        self.started = time.time()
        self.decode_options = DecodeOptions(
            temperatures=config.temperatures, max_new_tokens=config.max_new_tokens, pack=config.pack
        )

    def engine(self, model: Path | None = None) -> Engine:
        """The loaded engine (loaded once per process and version; see ``load_engine``'s cache)."""
        return load_engine(
            model or self.config.model_source,
            device=self.config.device,
            compute_type=self.config.compute_type,
            language=self.config.language,
            options=self.decode_options,
        )

    def served_version(self) -> str:
        return locate_model(self.config.model_source)[0]

    def _count(self, **how: int) -> None:
        with self._answers_lock:
            self.answers.update({k: v for k, v in how.items() if v})

    def predict(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One answer per task, in order, decoding only what neither Label Studio nor the cache has.

        A task is answered, cheapest first, from: a prediction of the served version already in the
        task Label Studio sent; the prediction cache (audio sha256 + version); else one engine batch
        over the remaining distinct clips, whose transcripts then go into the cache.
        """
        tasks = payload.get("tasks") or []
        from_name, to_name = _label_names(payload.get("label_config"))
        # The version is fixed for the whole request: a promotion meanwhile does not affect it.
        version, load_dir = locate_model(self.config.model_source)
        fingerprint = model_fingerprint(load_dir)
        answers: dict[int, dict[str, Any]] = {}
        errors: dict[int, str] = {}

        for position, task in enumerate(tasks):
            stored = _stored_prediction(task, version)
            if stored is not None:
                answers[position] = stored
        from_payload = len(answers)

        shas: dict[int, str] = {}
        for position, task in enumerate(tasks):
            sha = None if position in answers else self.fetcher.known_sha(task)
            if sha is not None:
                shas[position] = sha
        cached = self.cache.get_many(shas.values(), version, fingerprint)

        pending: dict[str, list[int]] = {}  # sha -> positions still to decode (duplicates decode once)
        sources: dict[str, tuple[Path | bytes, str]] = {}
        for position, task in enumerate(tasks):
            if position in answers:
                continue
            if shas.get(position) in cached:
                continue
            try:
                sha, source, label = self.fetcher.source(task)
            except TaskAudioError as exc:
                errors[position] = f"task {task.get('id', position)}: {exc}"
                log.warning("%s", errors[position])
                continue
            shas[position] = sha
            pending.setdefault(sha, []).append(position)
            sources.setdefault(sha, (source, label))
        if pending:  # audio downloaded from Label Studio: its sha256 may be cached all the same
            cached.update(self.cache.get_many(pending, version, fingerprint))
            for sha in [s for s in pending if s in cached]:
                del pending[sha]

        decoded = self._decode(load_dir, version, fingerprint, pending, sources, tasks, errors)
        cached_hits = 0
        for position, sha in shas.items():
            if position in answers or position in errors:
                continue
            if sha in decoded:
                answers[position] = _answer(version, decoded[sha], from_name, to_name)
            elif sha in cached:
                answers[position] = _answer(version, cached[sha], from_name, to_name, source="cache")
                cached_hits += 1
        self._count(
            requests=1, tasks=len(tasks), from_task=from_payload, from_cache=cached_hits,
            decoded=sum(len(p) for s, p in pending.items() if s in decoded), errors=len(errors),
        )
        results = [
            answers.get(position) or {"model_version": version, "error": errors.get(position, "not answered")}
            for position in range(len(tasks))
        ]
        return {"results": results, "model_version": version}

    def _decode(
        self,
        load_dir: Path,
        version: str,
        fingerprint: str,
        pending: dict[str, list[int]],
        sources: dict[str, tuple[Path | bytes, str]],
        tasks: list[dict[str, Any]],
        errors: dict[int, str],
    ) -> dict[str, CachedPrediction]:
        clips: list[np.ndarray] = []
        order: list[str] = []
        for sha, positions in pending.items():
            source, label = sources[sha]
            try:
                clips.append(self.fetcher.decode(source, label))
                order.append(sha)
            except TaskAudioError as exc:
                for position in positions:
                    errors[position] = f"task {tasks[position].get('id', position)}: {exc}"
                    log.warning("%s", errors[position])
        if not clips:
            return {}
        engine = self.engine(load_dir)
        transcripts = engine.transcribe(clips, beam_size=self.config.beam_size, words=True)
        self._count(decode_batches=1, decoded_clips=len(clips))
        decoded = {sha: cached_prediction(t) for sha, t in zip(order, transcripts, strict=True)}
        self.cache.put_many(version, fingerprint, list(decoded.items()))
        return decoded

    def webhook(self, payload: dict[str, Any]) -> dict[str, Any]:
        action = str(payload.get("action") or "")
        with self._events_lock:
            self.events[action or "UNKNOWN"] += 1
        if action == "START_TRAINING":
            return {"status": self.training.submit(), "job": f"train-{int(time.time())}"}
        return {"status": "ok", "action": action}

    def prediction_counts(self) -> dict[str, int]:
        """Tasks asked for and how each was answered: ``decoded_clips`` counts real engine work."""
        keys = ("requests", "tasks", "from_task", "from_cache", "decoded", "decoded_clips", "decode_batches", "errors")
        with self._answers_lock:
            return {k: int(self.answers[k]) for k in keys}

    def annotation_events(self) -> int:
        with self._events_lock:
            return sum(self.events[a] for a in ANNOTATION_ACTIONS)


def _stored_prediction(task: dict[str, Any], version: str) -> dict[str, Any] | None:
    """The task's own prediction of ``version`` (Label Studio sends a task's predictions with it)."""
    for prediction in task.get("predictions") or []:
        if not isinstance(prediction, dict) or prediction.get("model_version") != version:
            continue
        result = prediction.get("result")
        if isinstance(result, list) and result:
            answer: dict[str, Any] = {"model_version": version, "result": result, "meta": {"source": "task"}}
            if isinstance(prediction.get("score"), int | float):
                answer["score"] = prediction["score"]
            return answer
    return None


def _answer(version: str, p: CachedPrediction, from_name: str, to_name: str, *, source: str = "decoded") -> dict[str, Any]:
    answer: dict[str, Any] = {
        "model_version": version,
        "result": [{"from_name": from_name, "to_name": to_name, "type": "textarea", "value": {"text": [p.text]}}],
        "meta": {**p.meta, "source": source},
    }
    if p.score is not None:
        answer["score"] = p.score
    return answer

