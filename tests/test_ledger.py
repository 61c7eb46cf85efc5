"""The ledger: pending -> committed tasks, projects re-created, pull records; survives reopening."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from sync.ledger import Ledger
from sync.ledger_records import PullRecord, SegmentRecord


def _segment(key: str) -> SegmentRecord:
    session, filename = key.split("/")
    return SegmentRecord(key, session, filename, "ab" * 32, 1.5, "profesora", "habla-live", f"/rec/{key}")


def test_pending_commit_and_forget(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    with Ledger(path) as ledger:
        ledger.add_segments([_segment("s1/a.wav"), _segment("s1/b.wav"), _segment("s2/c.wav")])
        ledger.mark_pending(7, ["s1/a.wav", "s1/b.wav", "s2/c.wav"], ["habla-live", None, "habla-ground-truth"])
        assert ledger.pending_keys(7) == ["s1/a.wav", "s1/b.wav", "s2/c.wav"]
        assert ledger.task_id("s1/a.wav") is None
        ledger.commit_tasks(7, {"s1/a.wav": 101, "s1/b.wav": 102})
        ledger.forget_pending(7, ["s2/c.wav", "s1/a.wav"])  # committed keys are not forgotten
    with Ledger(path) as ledger:  # everything committed survives a new process
        assert ledger.pending_keys(7) == []
        assert ledger.task_map(7) == {"s1/a.wav": 101, "s1/b.wav": 102}
        assert ledger.task_id("s1/b.wav", 7) == 102
        assert ledger.prefill_sources(7) == {"s1/a.wav": "habla-live", "s1/b.wav": None}
        assert [s.key for s in ledger.segments(session="s1")] == ["s1/a.wav", "s1/b.wav"]
        assert ledger.segment("s2/c.wav").duration == 1.5
        assert ledger.counts(7) == {"archived": 3, "pushed": 2, "annotated": 0}


def test_recreated_project_forgets_old_task_ids(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        ledger.remember_project("http://ls", "title", 3)
        ledger.add_segments([_segment("s/a.wav")])
        ledger.commit_tasks(3, {"s/a.wav": 9})
        ledger.save_pulls(3, [PullRecord(9, "s/a.wav", 1, "t", "ok", "hola")])
        ledger.remember_project("http://ls", "title", 3)  # same id: nothing forgotten
        assert ledger.task_map(3) == {"s/a.wav": 9}
        ledger.remember_project("http://ls", "title", 4)
        assert ledger.project_id("http://ls", "title") == 4
        assert ledger.task_map(3) == {} and ledger.pulls(3) == {}


def test_pull_records_update_and_remove(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        ledger.save_pulls(1, [PullRecord(5, "s/a.wav", 1, "t1", "ok", "hola"), PullRecord(6, "s/b.wav", 2, "t1", "empty transcript", None)])
        ledger.save_pulls(1, [PullRecord(5, "s/a.wav", 1, "t2", "ok", "hola mundo")], removed=[6])
        assert ledger.pulls(1) == {5: PullRecord(5, "s/a.wav", 1, "t2", "ok", "hola mundo")}
        assert ledger.counts(1)["annotated"] == 1


def test_new_audio_under_the_same_key_keeps_the_old_in_the_history(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        ledger.add_segments([replace(_segment("s/a.wav"), source_size=10, source_mtime_ns=5)])
        ledger.add_segments([replace(_segment("s/a.wav"), source_size=10, source_mtime_ns=6)])  # same bytes
        assert ledger.audio_history("s/a.wav") == [] and ledger.segment("s/a.wav").source_mtime_ns == 6
        ledger.add_segments([replace(_segment("s/a.wav"), sha256="cd" * 32, duration=2.0)], replaced_at="2025-03-05T10:00:00.500000Z")
        ledger.add_segments([replace(_segment("s/a.wav"), sha256="ef" * 32, duration=3.0)], replaced_at="2025-03-06T10:00:00+00:00")
        ledger.set_source_stats({"s/a.wav": (99, 7)})
        current = ledger.segment("s/a.wav")
        assert (current.sha256, current.source_size, current.source_mtime_ns) == ("ef" * 32, 99, 7)
        assert [(v.sha256, v.duration) for v in ledger.audio_history("s/a.wav")] == [("ab" * 32, 1.5), ("cd" * 32, 2.0)]
        # An annotation is paired with the audio the segment had when it was saved (Label Studio's clock).
        assert ledger.audio_at("s/a.wav", "2025-03-05T10:00:00.400000Z") == ("ab" * 32, 1.5)
        assert ledger.audio_at("s/a.wav", "2025-03-05T11:00:00Z") == ("cd" * 32, 2.0)
        assert ledger.audio_at("s/a.wav", datetime(2025, 3, 7, tzinfo=UTC)) == ("ef" * 32, 3.0)
        assert ledger.audio_at("s/a.wav", None) == ("ef" * 32, 3.0) and ledger.audio_at("s/b.wav", None) is None


def test_audio_prefix_is_per_project_and_forgotten_with_a_recreated_project(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite3") as ledger:
        ledger.remember_project("http://ls", "title", 3)
        assert ledger.audio_prefix(3) is None
        ledger.set_audio_prefix(3, "home/archive")
        ledger.remember_project("http://ls", "title", 3)
        assert ledger.audio_prefix(3) == "home/archive"
        ledger.remember_project("http://ls", "title", 4)
        assert ledger.audio_prefix(4) is None and ledger.audio_prefix(3) is None


def test_a_ledger_of_the_previous_release_opens_and_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE segments (key TEXT PRIMARY KEY, session TEXT NOT NULL, filename TEXT NOT NULL, sha256 TEXT NOT NULL,"
        " duration REAL NOT NULL, speaker TEXT NOT NULL DEFAULT '', transcript_source TEXT, source_path TEXT NOT NULL,"
        " archived_at TEXT NOT NULL);"
        "CREATE TABLE projects (url TEXT NOT NULL, title TEXT NOT NULL, project_id INTEGER NOT NULL, PRIMARY KEY (url, title));"
        "INSERT INTO segments VALUES ('s/a.wav', 's', 'a.wav', 'aa', 1.0, '', NULL, '/rec/s/a.wav', '2025-01-01T00:00:00+00:00');"
        "INSERT INTO projects VALUES ('http://ls', 'title', 3);"
    )
    db.close()
    with Ledger(path) as ledger:
        old = ledger.segment("s/a.wav")
        assert (old.sha256, old.source_size, old.source_mtime_ns) == ("aa", None, None)  # hashed again once
        assert ledger.audio_prefix(3) is None  # task URLs checked once
        assert ledger.audio_history("s/a.wav") == []
