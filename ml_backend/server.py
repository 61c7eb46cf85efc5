"""The Label Studio ML backend: Label Studio 1.23's HTTP contract on FastAPI.

- ``GET /health`` and ``POST /setup`` report the served ``model_version`` (the registry version).
- ``POST /predict`` answers one entry per task, in order. Nothing is decoded twice: a task that
  already carries a prediction of the served version is answered from it, else from the prediction
  cache (audio sha256 + version, shared with ``habla-ls round``, see :mod:`ml_backend.prediction_cache`);
  the rest are transcribed in one engine batch (each distinct clip once) and cached. ``/health``
  counts how tasks were answered (``predictions.decoded_clips`` is the engine's real work). A task
  whose audio is missing, corrupt or on a foreign host gets an entry with an ``error`` and no
  ``result`` (Label Studio stores nothing for it); its batch-mates are answered.
- Hot swap: every request resolves ``models/CURRENT`` anew (a file read); a changed version is loaded
  and served from then on, while requests already running finish on the engine they hold.
- ``POST /webhook``: annotation events are counted; ``START_TRAINING`` (and ``POST /train``) queues the
  finish (``habla-ls finish``: pull, train, evaluate, gate, export, promote, deliver), run by a
  background worker as a subprocess, one at a time across all workers of this backend and every other
  habla-ls process of the work dir (the file lock ``<home>/.training.lock``), never inside the request:
  Label Studio waits 1 s for webhooks.
- Optional basic or bearer auth. Tokens are never logged or echoed.

All configuration comes from the environment (:data:`ENV_VARS`); :func:`create_app` builds the app.
"""

from __future__ import annotations

import base64
import collections
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from ml_backend.audio import AudioError, load_checked
from ml_backend.engine import DecodeOptions, EngineError, Transcription, load_engine, locate_model
from ml_backend.prediction_cache import CachedPrediction, PredictionCache, cache_path, model_fingerprint
from ml_backend.registry import RegistryError

log = logging.getLogger("habla_ls.backend")

ENV_VARS: dict[str, str] = {
    "HABLA_LS_HOME": "work dir: archive/ (audio by sha256) and models/ (the registry); default ./habla-ls-data",
    "HABLA_LS_MODEL": "what to serve: a registry models/ dir (its CURRENT, hot-swapped), a version dir or a model dir; default $HABLA_LS_HOME/models",
    "LABEL_STUDIO_URL": "Label Studio's base URL; task audio is downloaded only from this host",
    "LABEL_STUDIO_API_KEY": "Label Studio token used to download task audio (secret: never logged)",
    "HABLA_LS_LANGUAGE": "language forced on Whisper (default es)",
    "HABLA_LS_DEVICE": "auto, cpu or cuda (default auto)",
    "HABLA_LS_COMPUTE_TYPE": "CTranslate2/torch compute type (default int8 on CPU, float16 on GPU)",
    "HABLA_LS_BEAM_SIZE": "beam size of the decoder (default 5)",
    "HABLA_LS_TEMPERATURES": "decoding temperatures, comma-separated: the first is tried, the rest are fallbacks (default 0,0.2,0.4,0.6,0.8,1.0)",
    "HABLA_LS_MAX_NEW_TOKENS": "cap on tokens per clip (default: Whisper's limit)",
    "HABLA_LS_PACK": "1/0: decode several short clips per 30-s window on faster-whisper (default 1)",
    "HABLA_LS_CPU_THREADS": "cores the engine uses (default: this process's CPU affinity, capped by a cgroup CPU quota)",
    "HABLA_LS_TRAIN_COMMAND": "command run by START_TRAINING and /train (default `habla-ls finish`, with this Python)",
    "BASIC_AUTH_USER": "if set with BASIC_AUTH_PASS, requests need this HTTP basic auth",
    "BASIC_AUTH_PASS": "password for BASIC_AUTH_USER (secret)",
    "BACKEND_BEARER_TOKEN": "if set, requests may authenticate with `Authorization: Bearer <token>` (secret)",
    "PORT": "port of `habla-ls backend serve` (default 9090)",
    "WORKERS": "worker processes of `habla-ls backend serve` (default 1; each serves with threads)",
    "THREADS": "request threads per worker (default 4)",
}

DEFAULT_FROM_NAME = "transcription"
DEFAULT_TO_NAME = "audio"
AUDIO_KEYS = ("audio", "url", "wav")
DOWNLOAD_TIMEOUT = 30.0
# One training job at a time per work dir, across processes: the backend's queue, `habla-ls finish`
# and `habla-ls watch` all take this lock (habla_ls.finish reads these names; ml_backend cannot import it).
TRAINING_LOCK_FILE = ".training.lock"
# The queue holds the lock while its child runs and hands the locked descriptor down under this variable,
# so a child that takes the lock itself (the finish) joins it instead of waiting for its own parent.
TRAINING_LOCK_FD_ENV = "HABLA_LS_TRAINING_LOCK_FD"
DEFAULT_TRAIN_COMMAND = f"{shlex.quote(sys.executable)} -m habla_ls.cli finish"
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED", "ANNOTATION_DELETED")


@dataclass(frozen=True)
class BackendConfig:
    home: Path = Path("habla-ls-data")
    model: Path | None = None
    label_studio_url: str = "http://127.0.0.1:8080"
    label_studio_api_key: str | None = field(default=None, repr=False)
    language: str = "es"
    device: str = "auto"
    compute_type: str | None = None
    beam_size: int = 5
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    max_new_tokens: int | None = None
    pack: bool = True
    train_command: str = DEFAULT_TRAIN_COMMAND
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    bearer_token: str | None = field(default=None, repr=False)

    @property
    def model_source(self) -> Path:
        return self.model or self.home / "models"

    @property
    def archive_dir(self) -> Path:
        return self.home / "archive"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> BackendConfig:
        env = os.environ if environ is None else environ
        home = Path(env.get("HABLA_LS_HOME") or "habla-ls-data").expanduser()
        return cls(
            home=home,
            model=Path(env["HABLA_LS_MODEL"]).expanduser() if env.get("HABLA_LS_MODEL") else None,
            label_studio_url=(env.get("LABEL_STUDIO_URL") or cls.label_studio_url).rstrip("/"),
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            language=env.get("HABLA_LS_LANGUAGE") or "es",
            device=env.get("HABLA_LS_DEVICE") or "auto",
            compute_type=env.get("HABLA_LS_COMPUTE_TYPE") or None,
            beam_size=int(env.get("HABLA_LS_BEAM_SIZE") or 5),
            temperatures=tuple(float(t) for t in env["HABLA_LS_TEMPERATURES"].split(","))
            if env.get("HABLA_LS_TEMPERATURES")
            else cls.temperatures,
            max_new_tokens=int(env["HABLA_LS_MAX_NEW_TOKENS"]) if env.get("HABLA_LS_MAX_NEW_TOKENS") else None,
            pack=(env.get("HABLA_LS_PACK") or "1").lower() not in ("0", "false", "no"),
            train_command=env.get("HABLA_LS_TRAIN_COMMAND") or DEFAULT_TRAIN_COMMAND,
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            bearer_token=env.get("BACKEND_BEARER_TOKEN") or None,
        )


class TaskAudioError(ValueError):
    """This task's audio cannot be used; ``str()`` is the one-line reason."""


# ---------------------------------------------------------------------------------------------------
# Training jobs


@dataclass
class TrainingQueue:
    """START_TRAINING → one background job at a time; a request while one runs is coalesced into one more.

    The lock file :data:`TRAINING_LOCK_FILE` keeps several worker processes, `habla-ls watch` and a
    `habla-ls finish` started by hand from training at once; the child inherits the held lock.
    """

    command: str
    home: Path
    state: str = "idle"  # idle | running | queued
    runs: int = 0
    last_exit_code: int | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending = False
        self._thread = threading.Thread(target=self._worker, name="training-queue", daemon=True)
        self._thread.start()

    def submit(self) -> str:
        with self._lock:
            if self.state == "idle":
                self.state = "queued"
            self._pending = True
            self._wake.set()
            return "queued" if self.state == "queued" else "queued-after-current"

    def _worker(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                if not self._pending:
                    continue
                self._pending = False
                self.state = "running"
            code = self._run_once()
            with self._lock:
                self.runs += 1
                self.last_exit_code = code
                self.state = "queued" if self._pending else "idle"
                if self._pending:
                    self._wake.set()

    def _run_once(self) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        log_path = self.home / "reports" / "backend-training.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # "a": opening must not truncate the holder's pid, which the file carries for messages.
        with open(self.home / TRAINING_LOCK_FILE, "a+") as lock_fh:
            fcntl.flock(lock_fh, fcntl.LOCK_EX)  # one training at a time across processes
            log.info("training job started: %s", self.command)
            env = dict(os.environ, HABLA_LS_HOME=str(self.home), **{TRAINING_LOCK_FD_ENV: str(lock_fh.fileno())})
            with open(log_path, "ab") as out:
                try:
                    code = subprocess.run(
                        shlex.split(self.command), env=env, stdout=out, stderr=subprocess.STDOUT, pass_fds=(lock_fh.fileno(),)
                    ).returncode
                except OSError as exc:
                    log.error("training job could not start: %s", exc)
                    code = 127
            log.info("training job finished with exit code %s (log: %s)", code, log_path)
            return code

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self.state, "runs": self.runs, "last_exit_code": self.last_exit_code}


# ---------------------------------------------------------------------------------------------------
# Audio of a task


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


class AudioFetcher:
    """Audio bytes for a task: the archive by sha256 first, else Label Studio (and only Label Studio)."""

    def __init__(self, config: BackendConfig):
        self.config = config
        allowed = urlsplit(config.label_studio_url)
        self._allowed = (allowed.scheme, allowed.hostname, allowed.port or (443 if allowed.scheme == "https" else 80))
        self._client = httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=False)

    def archive_path(self, sha256: str) -> Path:
        return self.config.archive_dir / sha256[:2] / f"{sha256}.wav"

    def known_sha(self, task: dict[str, Any]) -> str | None:
        """The task's ``data.sha256`` when it is a well-formed digest (push writes it)."""
        sha = str((task.get("data") or {}).get("sha256") or "")
        return sha if re.fullmatch(r"[0-9a-f]{64}", sha) else None

    def source(self, task: dict[str, Any]) -> tuple[str, Path | bytes, str]:
        """(sha256 of the audio bytes, the archived file or the downloaded bytes, a label for messages)."""
        data = task.get("data") or {}
        sha = self.known_sha(task)
        if sha is not None:
            path = self.archive_path(sha)
            if path.is_file():
                return sha, path, path.name
        url = next((data[k] for k in AUDIO_KEYS if isinstance(data.get(k), str) and data[k]), None)
        if url is None:
            raise TaskAudioError("no audio: task data has neither a known sha256 nor an audio URL")
        content = self._download(url)
        return hashlib.sha256(content).hexdigest(), content, url

    def clip(self, task: dict[str, Any]) -> np.ndarray:
        _sha, source, label = self.source(task)
        return self.decode(source, label)

    def decode(self, source: Path | bytes, label: str) -> np.ndarray:
        try:
            return load_checked(source)
        except AudioError as exc:
            raise TaskAudioError(f"{label}: {exc}") from exc

    def _download(self, url: str) -> bytes:
        absolute = urljoin(self.config.label_studio_url + "/", url)
        parts = urlsplit(absolute)
        where = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        if where != self._allowed:
            raise TaskAudioError(f"refusing audio URL on {parts.hostname}:{where[2]}: only the Label Studio host is allowed")
        headers = {"Authorization": f"Token {self.config.label_studio_api_key}"} if self.config.label_studio_api_key else {}
        try:
            response = self._client.get(absolute, headers=headers)
        except httpx.HTTPError as exc:
            raise TaskAudioError(f"{url}: download failed ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise TaskAudioError(f"{url}: Label Studio answered HTTP {response.status_code}")
        return response.content


# ---------------------------------------------------------------------------------------------------
# The app


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

    def engine(self, model: Path | None = None):
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
        transcripts = engine.transcribe(clips, beam_size=self.config.beam_size)
        self._count(decode_batches=1, decoded_clips=len(clips))
        decoded = {sha: _cached(t) for sha, t in zip(order, transcripts, strict=True)}
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


def _cached(t: Transcription) -> CachedPrediction:
    return CachedPrediction(
        t.text,
        round(t.confidence, 4),
        {
            "avg_logprob": round(t.avg_logprob, 4),
            "no_speech_prob": round(t.no_speech_prob, 4),
            "compression_ratio": round(t.compression_ratio, 3),
            "likely_hallucination": t.likely_hallucination,
            "audio_seconds": round(t.audio_seconds, 3),
        },
    )


def _answer(version: str, p: CachedPrediction, from_name: str, to_name: str, *, source: str = "decoded") -> dict[str, Any]:
    answer: dict[str, Any] = {
        "model_version": version,
        "result": [{"from_name": from_name, "to_name": to_name, "type": "textarea", "value": {"text": [p.text]}}],
        "meta": {**p.meta, "source": source},
    }
    if p.score is not None:
        answer["score"] = p.score
    return answer


def _auth_dependency(config: BackendConfig):
    def check(request: Request) -> None:
        if not (config.bearer_token or (config.basic_auth_user and config.basic_auth_pass)):
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if config.bearer_token and scheme.lower() == "bearer" and secrets.compare_digest(value.strip(), config.bearer_token):
            return
        if config.basic_auth_user and config.basic_auth_pass and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if secrets.compare_digest(user, config.basic_auth_user) and secrets.compare_digest(password, config.basic_auth_pass):
                return
        raise HTTPException(status_code=401, detail="authentication required", headers={"WWW-Authenticate": "Basic"})

    return check


def create_app(config: BackendConfig | None = None) -> FastAPI:
    config = config or BackendConfig.from_env()
    backend = Backend(config)
    app = FastAPI(title="habla-ls ML backend")
    app.state.backend = backend

    @app.on_event("startup")
    def size_thread_pool() -> None:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = int(os.environ.get("THREADS") or 4)
    auth = Depends(_auth_dependency(config))

    @app.exception_handler(EngineError)
    @app.exception_handler(RegistryError)
    async def no_model(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503, content={"status": "ERROR", "error": str(exc)})

    # Plain `def` endpoints run in FastAPI's thread pool: concurrent requests do not block each other.
    @app.get("/health")
    @app.get("/")
    def health() -> dict[str, Any]:
        try:
            version = backend.served_version()
            status = "UP"
        except (EngineError, RegistryError) as exc:
            version, status = None, f"NO MODEL: {exc}"
        return {
            "status": status,
            "model_class": "HablaWhisper",
            "model_version": version,
            "annotation_events": backend.annotation_events(),
            "predictions": backend.prediction_counts(),
            "events": dict(backend.events),
            "training": backend.training.snapshot(),
        }

    @app.post("/setup", dependencies=[auth])
    def setup() -> dict[str, Any]:
        return {"model_version": backend.served_version()}

    @app.post("/validate", dependencies=[auth])
    def validate() -> dict[str, Any]:
        return {"status": "ok"}

    @app.post("/predict", dependencies=[auth])
    def predict(payload: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(payload.get("tasks", []), list):
            raise HTTPException(status_code=422, detail="tasks must be a list")
        return backend.predict(payload)

    @app.post("/webhook", dependencies=[auth])
    def webhook(payload: dict[str, Any]) -> dict[str, Any]:
        return backend.webhook(payload)

    @app.post("/train", dependencies=[auth])
    def train() -> dict[str, Any]:
        return backend.webhook({"action": "START_TRAINING"})

    return app


def app_factory() -> FastAPI:
    """For ``uvicorn --factory ml_backend.server:app_factory`` (configuration from the environment)."""
    return create_app()
