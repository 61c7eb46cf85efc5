"""Transcripts already decoded, keyed by (audio sha256, model version): decode a clip once per model.

Also each clip's encoder vector (:meth:`~ml_backend.engine.Engine.embed`), for the diversity ranking.

Shared by the ML backend (Label Studio asking for a task) and ``habla-ls round`` (which writes every
prediction it makes), so a task the round predicted is answered by the backend without decoding.

- One SQLite file under the work dir, in WAL mode: any number of readers (backend workers, the round)
  and one writer at a time; a crash mid-write loses at most that write, never the file.
- Each row also holds the model's *fingerprint* (the weights file's size and mtime): a version dir
  deleted and re-created under the same name, or re-exported, is a miss rather than a stale answer.
- An in-memory front (LRU) spares SQLite the hot rows; a miss there costs one indexed lookup.
- The cache is an optimisation: if the file cannot be opened or written, the caller decodes as if it
  were empty (one warning line), it never fails a prediction.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.engine import Transcription

log = logging.getLogger(__name__)

CACHE_FILE = "prediction-cache.sqlite3"
WORDS_META = "words"  # meta key: [[text, start s, end s, probability, tokens], ...] of the transcript's words
MEMORY_ROWS = 20_000
BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    sha256 TEXT NOT NULL,
    model_version TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    text TEXT NOT NULL,
    score REAL,
    meta TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    PRIMARY KEY (sha256, model_version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS embeddings (
    sha256 TEXT NOT NULL,
    model_version TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (sha256, model_version)
) WITHOUT ROWID
"""


@dataclass(frozen=True)
class CachedPrediction:
    text: str
    score: float | None
    meta: dict[str, Any] = field(default_factory=dict)


def cached_prediction(t: Transcription) -> CachedPrediction:
    """What is kept of a transcription: the text, its confidence as the score, and the figures the
    backend, the round and the labelling page read (each word's time and probability among them)."""
    meta: dict[str, Any] = {
        "avg_logprob": round(t.avg_logprob, 4),
        "no_speech_prob": round(t.no_speech_prob, 4),
        "compression_ratio": round(t.compression_ratio, 3),
        "likely_hallucination": t.likely_hallucination,
        "audio_seconds": round(t.audio_seconds, 3),
    }
    if t.words:
        meta[WORDS_META] = [[w.text, w.start, w.end, w.probability, w.tokens] for w in t.words]
    return CachedPrediction(t.text, round(float(t.confidence), 4), meta)


def cache_path(home: Path) -> Path:
    return Path(home) / CACHE_FILE


def model_fingerprint(load_dir: Path) -> str:
    """Identifies the weights a version name stands for (size + mtime of the weights file)."""
    load_dir = Path(load_dir)
    for name in ("model.bin", "model.safetensors", "adapter_model.safetensors", "config.json"):
        path = load_dir / name
        if path.is_file():
            stat = path.stat()
            return f"{name}:{stat.st_size}:{stat.st_mtime_ns}"
    return "unknown"


class PredictionCache:
    """Thread-safe; one instance per process is enough (it holds one SQLite connection)."""

    def __init__(self, path: Path, *, memory_rows: int = MEMORY_ROWS):
        self.path = Path(path)
        self._memory: collections.OrderedDict[tuple[str, str], tuple[str, CachedPrediction]] = collections.OrderedDict()
        self._memory_rows = memory_rows
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False

    # -- connection ------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # with WAL: never corrupt, at worst loses the last write
            db.executescript(_SCHEMA)
            db.execute("SELECT count(*) FROM predictions").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is not None or self._broken:
            return self._db
        try:
            try:
                self._db = self._open()
            except sqlite3.OperationalError:
                raise  # locked or busy: worth trying again on the next call
            except sqlite3.DatabaseError as exc:  # not a database, malformed
                self._set_aside(exc)
                self._db = self._open()
        except sqlite3.OperationalError as exc:
            log.warning("prediction cache %s busy (%s): decoding without it this time", self.path, exc)
        except (sqlite3.Error, OSError) as exc:
            log.warning("prediction cache %s unusable (%s): decoding without it", self.path, exc)
            self._broken = True
        return self._db

    def _set_aside(self, exc: Exception) -> None:
        """A damaged file (not SQLite, truncated) is moved aside: it only ever held re-computable data."""
        aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        log.warning("prediction cache %s is damaged (%s): moved to %s, starting empty", self.path, exc, aside.name)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                Path(str(self.path) + suffix).replace(str(aside) + suffix)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- reads and writes --------------------------------------------------------------------------------

    def get(self, sha256: str, model_version: str, fingerprint: str) -> CachedPrediction | None:
        return self.get_many([sha256], model_version, fingerprint).get(sha256)

    def get_many(self, shas: Iterable[str], model_version: str, fingerprint: str) -> dict[str, CachedPrediction]:
        wanted = list(dict.fromkeys(shas))
        found: dict[str, CachedPrediction] = {}
        with self._lock:
            missing = []
            for sha in wanted:
                hit = self._memory.get((sha, model_version))
                if hit is not None and hit[0] == fingerprint:
                    self._memory.move_to_end((sha, model_version))
                    found[sha] = hit[1]
                else:
                    missing.append(sha)
            db = self._connect() if missing else None
            if db is None:
                return found
            try:
                stored = _select(db, "predictions", "text, score, meta", model_version, fingerprint, missing)
                for sha, text, score, meta in stored:
                    prediction = CachedPrediction(text, score, _load_meta(meta))
                    found[sha] = prediction
                    self._remember(sha, model_version, fingerprint, prediction)
            except sqlite3.Error as exc:
                log.warning("prediction cache %s: read failed (%s); decoding instead", self.path, exc)
        return found

    def put_many(self, model_version: str, fingerprint: str, items: Sequence[tuple[str, CachedPrediction]]) -> None:
        if not items:
            return
        now = time.time()
        rows = [
            (sha, model_version, fingerprint, p.text, p.score, json.dumps(p.meta, ensure_ascii=False), now)
            for sha, p in items
        ]
        with self._lock:
            for sha, prediction in items:
                self._remember(sha, model_version, fingerprint, prediction)
            self._write("INSERT OR REPLACE INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)", rows, "predictions")

    def put(self, sha256: str, model_version: str, fingerprint: str, prediction: CachedPrediction) -> None:
        self.put_many(model_version, fingerprint, [(sha256, prediction)])

    def get_embeddings(self, shas: Iterable[str], model_version: str, fingerprint: str) -> dict[str, np.ndarray]:
        """The stored encoder vectors of ``shas`` for this model (float32); missing ones are absent."""
        wanted = list(dict.fromkeys(shas))
        found: dict[str, np.ndarray] = {}
        with self._lock:
            db = self._connect() if wanted else None
            if db is None:
                return found
            try:
                for sha, vector in _select(db, "embeddings", "vector", model_version, fingerprint, wanted):
                    found[sha] = np.frombuffer(vector, dtype=np.float16).astype(np.float32)
            except sqlite3.Error as exc:
                log.warning("prediction cache %s: read failed (%s); encoding instead", self.path, exc)
        return found

    def put_embeddings(self, model_version: str, fingerprint: str, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Stores vectors as float16 (a whisper-base vector: 1 KB); distances need no more precision."""
        if not items:
            return
        rows = [(sha, model_version, fingerprint, np.asarray(v, dtype=np.float16).tobytes()) for sha, v in items]
        with self._lock:
            self._write("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows, "vectors")

    def _write(self, statement: str, rows: Sequence[tuple[Any, ...]], what: str) -> None:
        """One transaction for ``rows`` (the lock held); a failed write is a warning: the cache only saves work."""
        db = self._connect()
        if db is None:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(statement, rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            log.warning("prediction cache %s: write failed (%s); %s are not cached", self.path, exc, what)

    def _remember(self, sha: str, model_version: str, fingerprint: str, prediction: CachedPrediction) -> None:
        self._memory[(sha, model_version)] = (fingerprint, prediction)
        self._memory.move_to_end((sha, model_version))
        while len(self._memory) > self._memory_rows:
            self._memory.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            db = self._connect()
            if db is None:
                return 0
            return int(db.execute("SELECT count(*) FROM predictions").fetchone()[0])


# SQLite allows 999 parameters in older builds: ask for the keys in chunks well below that.
_CHUNK = 500


def _select(
    db: sqlite3.Connection, table: str, columns: str, model_version: str, fingerprint: str, shas: Sequence[str]
) -> Iterator[tuple[Any, ...]]:
    """``(sha256, *columns)`` of the rows of ``table`` stored for this model and fingerprint."""
    for start in range(0, len(shas), _CHUNK):
        chunk = shas[start : start + _CHUNK]
        rows = db.execute(
            f"SELECT sha256, fingerprint, {columns} FROM {table} "
            f"WHERE model_version = ? AND sha256 IN ({','.join('?' * len(chunk))})",
            (model_version, *chunk),
        ).fetchall()
        for sha, stored_fingerprint, *values in rows:
            if stored_fingerprint == fingerprint:
                yield (sha, *values)


def _load_meta(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
