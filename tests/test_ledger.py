"""The ledger: pending -> committed tasks, projects re-created, pull records; survives reopening."""

from __future__ import annotations

from pathlib import Path

from sync.ledger import Ledger, PullRecord, SegmentRecord


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
