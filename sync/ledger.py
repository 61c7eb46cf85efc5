"""The ledger (``<home>/ledger.sqlite3``): what has been archived, pushed and pulled.

Tables:

- ``segments``: one row per archived segment (key, session, file, sha256, duration, speaker, where the
  prefill transcript came from, and the source file's size and mtime when it was hashed, so that a push
  re-reads only files that changed on disk). Written only after the audio is in the archive.
- ``segment_history``: every earlier audio of a segment whose WAV changed under the same name, with when it
  was replaced (append-only). The archive keeps those files too, so an annotation made on the old audio
  can still be paired with what the annotator heard (:meth:`Ledger.audio_at`).
- ``projects``: Label Studio projects by (server URL, title) -> id, so a dry run needs no server; plus the
  archive's path below the document root that the project's task URLs were written with.
- ``tasks``: segment key -> task id per project. ``task_id`` is NULL while *pending*: the key is about to
  be imported. A push marks a batch pending, imports it, then commits the ids; a crash between import
  and commit leaves pending rows that the next push resolves by asking Label Studio for those
  ``ext_id``\\ s (no duplicates, nothing missing).
- ``pulls``: per project and task, the annotation last turned into a manifest row (or the reason it was
  left out), plus the task's fingerprint as Label Studio last showed it (``updated_at`` and its count of
  non-cancelled annotations) and its data. ``sync pull`` compares fingerprints to fetch only what changed.
- ``pull_state``: per project, the server time from which the next ``sync pull`` lists changed tasks.

Each write is one SQLite transaction (WAL mode), so the ledger is consistent after a crash at any point.
Rows come back as the dataclasses of :mod:`sync.ledger_records`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sync.ledger_records import STATUS_OK, AudioVersion, PullRecord, SegmentRecord, now_iso

SCHEMA_VERSION = 3

SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    key TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    filename TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    duration REAL NOT NULL,
    speaker TEXT NOT NULL DEFAULT '',
    transcript_source TEXT,
    source_path TEXT NOT NULL,
    archived_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_sha256 ON segments(sha256);
CREATE TABLE IF NOT EXISTS segment_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    duration REAL NOT NULL,
    archived_at TEXT NOT NULL,
    replaced_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS segment_history_key ON segment_history(key);
CREATE TABLE IF NOT EXISTS projects (
    url TEXT NOT NULL,
    title TEXT NOT NULL,
    project_id INTEGER NOT NULL,
    PRIMARY KEY (url, title)
);
CREATE TABLE IF NOT EXISTS tasks (
    project_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    task_id INTEGER,
    prefill_source TEXT,
    pushed_at TEXT,
    PRIMARY KEY (project_id, key)
);
CREATE INDEX IF NOT EXISTS tasks_task_id ON tasks(task_id);
CREATE TABLE IF NOT EXISTS pulls (
    project_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    annotation_id INTEGER,
    annotation_updated_at TEXT,
    status TEXT NOT NULL,
    transcript TEXT,
    pulled_at TEXT NOT NULL,
    task_updated_at TEXT,
    ok_annotations INTEGER,
    data TEXT,
    PRIMARY KEY (project_id, task_id)
);
CREATE TABLE IF NOT EXISTS pull_state (
    project_id INTEGER PRIMARY KEY,
    anchor TEXT,
    full_pull_at TEXT
);
"""

# Columns added after version 1; a ledger written by an older habla-ls gets them on open (NULL = unknown,
# which makes the next pull a full one).
ADDED_COLUMNS = {
    "pulls": (("task_updated_at", "TEXT"), ("ok_annotations", "INTEGER"), ("data", "TEXT")),
    # NULL: hashed by an older habla-ls; the next push hashes the file once to fill them in.
    "segments": (("source_size", "INTEGER"), ("source_mtime_ns", "INTEGER")),
    # NULL: unknown; the next push checks every task's audio URL once.
    "projects": (("audio_prefix", "TEXT"),),
}


def _as_utc(value: str | datetime) -> datetime | None:
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            for table, columns in ADDED_COLUMNS.items():
                present = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns:
                    if name not in present:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- segments ------------------------------------------------------------------------------------

    def add_segments(self, records: Iterable[SegmentRecord], *, replaced_at: str | None = None) -> None:
        """Records archived segments. A key that had other audio keeps it in ``segment_history``, replaced
        at ``replaced_at`` (default: now), in the same transaction."""
        records = list(records)
        stamp = now_iso()
        replaced = replaced_at or now_iso("microseconds")
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO segment_history (key, sha256, duration, archived_at, replaced_at)"
                " SELECT key, sha256, duration, archived_at, ? FROM segments WHERE key = ? AND sha256 != ?",
                [(replaced, r.key, r.sha256) for r in records],
            )
            db.executemany(
                "INSERT INTO segments (key, session, filename, sha256, duration, speaker, transcript_source,"
                " source_path, archived_at, source_size, source_mtime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET"
                " archived_at=CASE WHEN sha256 = excluded.sha256 THEN archived_at ELSE excluded.archived_at END,"
                " sha256=excluded.sha256, duration=excluded.duration,"
                " speaker=excluded.speaker, transcript_source=excluded.transcript_source,"
                " source_path=excluded.source_path, source_size=excluded.source_size,"
                " source_mtime_ns=excluded.source_mtime_ns",
                [
                    (
                        r.key, r.session, r.filename, r.sha256, r.duration, r.speaker, r.transcript_source,
                        r.source_path, stamp, r.source_size, r.source_mtime_ns,
                    )
                    for r in records
                ],
            )

    def set_source_stats(self, stats: dict[str, tuple[int, int]]) -> None:
        """(size, mtime_ns) of source files found touched but with the same bytes: no re-hash next time."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE segments SET source_size = ?, source_mtime_ns = ? WHERE key = ?",
                [(size, mtime, key) for key, (size, mtime) in stats.items()],
            )

    def audio_history(self, key: str) -> list[AudioVersion]:
        """The segment's earlier audio, oldest first (empty when its WAV never changed)."""
        rows = self._db.execute(
            "SELECT sha256, duration, archived_at, replaced_at FROM segment_history WHERE key = ? ORDER BY id", (key,)
        )
        return [AudioVersion(*row) for row in rows]

    def keys_with_history(self) -> set[str]:
        """The segments whose audio was ever replaced (the only ones :meth:`audio_at` must look up)."""
        return {key for (key,) in self._db.execute("SELECT DISTINCT key FROM segment_history")}

    def audio_at(self, key: str, when: str | datetime | None) -> tuple[str, float] | None:
        """(sha256, duration) of the audio the segment had at ``when`` (e.g. an annotation's ``updated_at``);
        the current audio when ``when`` is None or later than every change; None for an unknown key."""
        current = self.segment(key)
        if current is None:
            return None
        moment = _as_utc(when) if when is not None else None
        if moment is not None:
            for version in self.audio_history(key):
                replaced = _as_utc(version.replaced_at)
                if replaced is not None and moment < replaced:
                    return version.sha256, version.duration
        return current.sha256, current.duration

    def segment(self, key: str) -> SegmentRecord | None:
        row = self._db.execute(
            "SELECT key, session, filename, sha256, duration, speaker, transcript_source, source_path, archived_at,"
            " source_size, source_mtime_ns"
            " FROM segments WHERE key = ?",
            (key,),
        ).fetchone()
        return SegmentRecord(*row) if row else None

    def segments(self, *, session: str | None = None) -> list[SegmentRecord]:
        """Every archived segment (optionally of one session), ordered by key."""
        sql = (
            "SELECT key, session, filename, sha256, duration, speaker, transcript_source, source_path, archived_at,"
            " source_size, source_mtime_ns FROM segments"
        )
        args: tuple = ()
        if session is not None:
            sql += " WHERE session = ?"
            args = (session,)
        return [SegmentRecord(*row) for row in self._db.execute(sql + " ORDER BY key", args)]

    # -- projects ------------------------------------------------------------------------------------

    def remember_project(self, url: str, title: str, project_id: int) -> None:
        with self.transaction() as db:
            old = db.execute("SELECT project_id FROM projects WHERE url = ? AND title = ?", (url, title)).fetchone()
            if old and old[0] != project_id:
                # The project was deleted and re-created in Label Studio: its old task ids mean nothing now.
                db.execute("DELETE FROM tasks WHERE project_id = ?", (old[0],))
                db.execute("DELETE FROM pulls WHERE project_id = ?", (old[0],))
                db.execute("DELETE FROM pull_state WHERE project_id = ?", (old[0],))
            db.execute(
                "INSERT INTO projects (url, title, project_id) VALUES (?, ?, ?)"
                " ON CONFLICT(url, title) DO UPDATE SET project_id = excluded.project_id,"
                " audio_prefix = CASE WHEN project_id = excluded.project_id THEN audio_prefix ELSE NULL END",
                (url, title, project_id),
            )

    def project_id(self, url: str, title: str) -> int | None:
        row = self._db.execute("SELECT project_id FROM projects WHERE url = ? AND title = ?", (url, title)).fetchone()
        return row[0] if row else None

    def audio_prefix(self, project_id: int) -> str | None:
        """The archive's path below the document root that the project's task URLs were written with."""
        row = self._db.execute(
            "SELECT audio_prefix FROM projects WHERE project_id = ? AND audio_prefix IS NOT NULL", (project_id,)
        ).fetchone()
        return row[0] if row else None

    def set_audio_prefix(self, project_id: int, prefix: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE projects SET audio_prefix = ? WHERE project_id = ?", (prefix, project_id))

    # -- tasks ---------------------------------------------------------------------------------------

    def task_id(self, key: str, project_id: int | None = None) -> int | None:
        """The Label Studio task id of a segment (in ``project_id``, else in any project)."""
        sql = "SELECT task_id FROM tasks WHERE key = ? AND task_id IS NOT NULL"
        args: tuple = (key,)
        if project_id is not None:
            sql += " AND project_id = ?"
            args += (project_id,)
        row = self._db.execute(sql + " ORDER BY project_id LIMIT 1", args).fetchone()
        return row[0] if row else None

    def pushed_keys(self, project_id: int) -> set[str]:
        rows = self._db.execute("SELECT key FROM tasks WHERE project_id = ? AND task_id IS NOT NULL", (project_id,))
        return {row[0] for row in rows}

    def task_map(self, project_id: int) -> dict[str, int]:
        """segment key -> task id, for every committed task of the project."""
        rows = self._db.execute(
            "SELECT key, task_id FROM tasks WHERE project_id = ? AND task_id IS NOT NULL", (project_id,)
        )
        return dict(rows.fetchall())

    def pending_keys(self, project_id: int) -> list[str]:
        rows = self._db.execute("SELECT key FROM tasks WHERE project_id = ? AND task_id IS NULL ORDER BY key", (project_id,))
        return [row[0] for row in rows]

    def mark_pending(self, project_id: int, keys: Iterable[str], prefill_sources: Iterable[str | None]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO tasks (project_id, key, task_id, prefill_source) VALUES (?, ?, NULL, ?)"
                " ON CONFLICT(project_id, key) DO NOTHING",
                [(project_id, key, source) for key, source in zip(keys, prefill_sources, strict=True)],
            )

    def commit_tasks(self, project_id: int, task_ids: dict[str, int]) -> None:
        stamp = now_iso()
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO tasks (project_id, key, task_id, pushed_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(project_id, key) DO UPDATE SET task_id = excluded.task_id, pushed_at = excluded.pushed_at",
                [(project_id, key, task_id, stamp) for key, task_id in task_ids.items()],
            )

    def forget_pending(self, project_id: int, keys: Iterable[str]) -> None:
        with self.transaction() as db:
            db.executemany(
                "DELETE FROM tasks WHERE project_id = ? AND key = ? AND task_id IS NULL",
                [(project_id, key) for key in keys],
            )

    def prefill_source(self, project_id: int, key: str) -> str | None:
        row = self._db.execute(
            "SELECT prefill_source FROM tasks WHERE project_id = ? AND key = ?", (project_id, key)
        ).fetchone()
        return row[0] if row else None

    def set_prefill_sources(self, project_id: int, sources: dict[str, str | None]) -> None:
        with self.transaction() as db:
            db.executemany(
                "UPDATE tasks SET prefill_source = ? WHERE project_id = ? AND key = ?",
                [(source, project_id, key) for key, source in sources.items()],
            )

    def prefill_sources(self, project_id: int) -> dict[str, str | None]:
        rows = self._db.execute(
            "SELECT key, prefill_source FROM tasks WHERE project_id = ? AND task_id IS NOT NULL", (project_id,)
        )
        return dict(rows.fetchall())

    # -- pulls ---------------------------------------------------------------------------------------

    def pulls(self, project_id: int) -> dict[int, PullRecord]:
        rows = self._db.execute(
            "SELECT task_id, key, annotation_id, annotation_updated_at, status, transcript, task_updated_at,"
            " ok_annotations, data FROM pulls WHERE project_id = ?",
            (project_id,),
        )
        return {row[0]: PullRecord(*row) for row in rows}

    def pull_anchor(self, project_id: int) -> str | None:
        """Server time (ISO, UTC) the last pull covered Label Studio up to; None before the first full pull."""
        row = self._db.execute("SELECT anchor FROM pull_state WHERE project_id = ?", (project_id,)).fetchone()
        return row[0] if row else None

    def save_pulls(
        self,
        project_id: int,
        changed: Iterable[PullRecord],
        removed: Iterable[int] = (),
        *,
        anchor: str | None = None,
        full: bool = False,
    ) -> None:
        """Upserts ``changed``, deletes ``removed`` and moves the anchor, all in one transaction: a crash
        leaves either the old state (the next pull redoes the work) or the new one, never a mix."""
        stamp = now_iso()
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO pulls (project_id, task_id, key, annotation_id, annotation_updated_at, status,"
                " transcript, pulled_at, task_updated_at, ok_annotations, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(project_id, task_id) DO UPDATE SET key = excluded.key,"
                " annotation_id = excluded.annotation_id, annotation_updated_at = excluded.annotation_updated_at,"
                " status = excluded.status, transcript = excluded.transcript, pulled_at = excluded.pulled_at,"
                " task_updated_at = excluded.task_updated_at, ok_annotations = excluded.ok_annotations,"
                " data = excluded.data",
                [
                    (
                        project_id, r.task_id, r.key, r.annotation_id, r.annotation_updated_at, r.status,
                        r.transcript, stamp, r.task_updated_at, r.ok_annotations, r.data_json,
                    )
                    for r in changed
                ],
            )
            db.executemany(
                "DELETE FROM pulls WHERE project_id = ? AND task_id = ?", [(project_id, t) for t in removed]
            )
            if anchor is not None:
                db.execute(
                    "INSERT INTO pull_state (project_id, anchor, full_pull_at) VALUES (?, ?, ?)"
                    " ON CONFLICT(project_id) DO UPDATE SET anchor = excluded.anchor,"
                    " full_pull_at = COALESCE(excluded.full_pull_at, pull_state.full_pull_at)",
                    (project_id, anchor, stamp if full else None),
                )

    # -- counts for `habla-ls status` ----------------------------------------------------------------

    def counts(self, project_id: int | None = None) -> dict[str, int]:
        one = self._db.execute
        out = {"archived": one("SELECT COUNT(*) FROM segments").fetchone()[0]}
        where, args = ("WHERE project_id = ?", (project_id,)) if project_id is not None else ("", ())
        out["pushed"] = one(f"SELECT COUNT(*) FROM tasks {where} {'AND' if where else 'WHERE'} task_id IS NOT NULL", args).fetchone()[0]
        out["annotated"] = one(
            f"SELECT COUNT(*) FROM pulls {where} {'AND' if where else 'WHERE'} status = '{STATUS_OK}'", args
        ).fetchone()[0]
        return out
