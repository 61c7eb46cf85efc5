"""What a ``sync pull`` will write, worked out before anything is written.

:func:`plan_pull` turns what Label Studio showed (:class:`sync.pull_changes.Changes`) and what the ledger
knew (:class:`LedgerView`) into a :class:`PullPlan`: the ledger records to save and remove, the manifest's
rows and its files' bytes, the next anchor, the summary. :func:`sync.pull.apply_plan` writes it.

A pull plans twice: first on the snapshot while Label Studio still lists the tasks touched during it, then
on the final changes. Records, rows and the rows' lines in the manifest files are kept per task in a
:class:`PlanMemo` and reused while their input is the very same object, so the second plan redoes only the
tasks the listing changed (usually none) and joins the lines again.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.archive import Archive
from sync.habla import Problem
from sync.habla_writer import Correction
from sync.labelling_config import read_result
from sync.ledger import Ledger
from sync.ledger_records import STATUS_OK, PullRecord, SegmentRecord
from sync.ls_times import normalise_time
from sync.manifest import ManifestRow, join_lines, row_lines
from sync.pull_changes import MODE_FULL, Changes

STATUS_SKIPPED = "skipped or cancelled"
STATUS_EMPTY = "empty transcript"
STATUS_NO_AUDIO = "audio not in the archive"
STATUS_UNKNOWN = "not a habla-ls task (no ext_id)"


@dataclass
class PullSummary:
    project_id: int
    annotated_tasks: int = 0
    usable: int = 0  # rows in the manifest
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0  # tasks whose annotations were all deleted since the last pull
    left_out: Counter[str] = field(default_factory=Counter)
    manifest_changed: bool = False
    manifest_path: Path | None = None
    habla_written: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    mode: str = MODE_FULL  # how Label Studio was read: "full", "incremental", "+ reconciled"
    listed: int = 0  # tasks Label Studio listed as possibly changed
    fetched: int = 0  # tasks whose annotations were exported

    def lines(self) -> list[str]:
        out = [
            f"project {self.project_id}: {self.annotated_tasks} annotated tasks; {self.usable} usable "
            f"({self.new} new, {self.updated} updated, {self.unchanged} unchanged, {self.removed} removed)",
            f"manifest {self.manifest_path} " + ("written" if self.manifest_changed else "unchanged (nothing new)"),
            f"read Label Studio ({self.mode}): {self.listed} task(s) listed as touched, {self.fetched} exported",
        ]
        for reason, count in sorted(self.left_out.items()):
            out.append(f"  left out {count}: {reason}")
        if self.habla_written:
            out.append(f"wrote {len(self.habla_written)} corrected_ground_truth.json file(s) into Habla's sessions")
        return out


def _timestamp(annotation: dict[str, Any]) -> tuple[str, int]:
    return (normalise_time(annotation.get("updated_at") or annotation.get("created_at")), int(annotation.get("id") or 0))


def choose(task: dict[str, Any]) -> PullRecord:
    """The record ``sync pull`` keeps for one exported task (status "ok" or why it is left out)."""
    key = str((task.get("data") or {}).get("ext_id") or "")
    annotations = task.get("annotations") or []
    kept = [a for a in annotations if not a.get("was_cancelled")]
    fingerprint = {
        "task_updated_at": normalise_time(task.get("updated_at")),
        "ok_annotations": int(task.get("total_annotations") or 0),
        "data_json": json.dumps(task.get("data") or {}, ensure_ascii=False, sort_keys=True),
    }
    if not key:
        return PullRecord(int(task["id"]), key, None, None, STATUS_UNKNOWN, None, **fingerprint)
    if not kept:
        latest = max(annotations, key=_timestamp) if annotations else {}
        return PullRecord(int(task["id"]), key, latest.get("id"), latest.get("updated_at"), STATUS_SKIPPED, None, **fingerprint)
    latest = max(kept, key=_timestamp)
    text, flags = read_result(latest.get("result") or [])
    status = "marked " + " + ".join(flags) if flags else (STATUS_OK if text else STATUS_EMPTY)
    return PullRecord(
        int(task["id"]),
        key,
        latest.get("id"),
        latest.get("updated_at"),
        status,
        text if status == STATUS_OK else None,
        **fingerprint,
    )


@dataclass(frozen=True)
class LedgerView:
    """What the ledger knew before this pull, read once."""

    ledger: Ledger  # asked for the audio a replaced segment had when it was annotated
    previous: dict[int, PullRecord]  # the last pull's record of each task
    segments: dict[str, SegmentRecord]  # the archived segments, by key
    replaced: set[str]  # the keys whose audio changed at some point (:meth:`Ledger.keys_with_history`)
    archive: Archive  # resolved once: rows hold absolute paths

    @classmethod
    def read(cls, ledger: Ledger, previous: dict[int, PullRecord], archive_dir: Path) -> LedgerView:
        segments = {segment.key: segment for segment in ledger.segments()}
        return cls(ledger, previous, segments, ledger.keys_with_history(), Archive(Path(archive_dir).resolve()))


@dataclass
class PlanMemo:
    """Work kept per task between the plans of one pull, reused while its input is the very same object."""

    records: dict[int, tuple[dict[str, Any], PullRecord, Problem | None]] = field(default_factory=dict)
    rows: dict[int, tuple[PullRecord, ManifestRow, tuple[str, str]]] = field(default_factory=dict)
    rendered: tuple[list[ManifestRow], dict[str, bytes]] | None = None


@dataclass
class PullPlan:
    """Everything one pull writes, and what it will report."""

    summary: PullSummary
    fetched: list[PullRecord]  # records of the exported tasks, to save
    removed: list[int]  # known task ids with no annotation left, to delete
    rows: list[ManifestRow]
    rendered: dict[str, bytes]  # the manifest files' bytes
    anchor: str | None  # where the next pull starts listing (None: the next pull is a full one)
    full: bool  # Label Studio was read whole (snapshot or reconciliation)
    corrections: dict[Path, list[Correction]] = field(default_factory=dict)  # per Habla session dir, if asked


def plan_pull(
    project_id: int, changes: Changes, known: LedgerView, memo: PlanMemo, *, write_habla: bool = False
) -> PullPlan:
    """The plan for ``changes`` over what the ledger ``known``; ``write_habla``: with the corrections to write
    into Habla's session dirs. Reads the ledger, writes nothing."""
    previous = known.previous
    summary = PullSummary(project_id=project_id, mode=changes.mode, listed=changes.listed, fetched=changes.exported)
    fetched: list[PullRecord] = []
    for task in changes.tasks.values():
        record, problem = _record(task, known, memo)
        if problem is not None:
            summary.problems.append(problem)
        fetched.append(record)

    removed = sorted(t for t in changes.gone if t in previous)
    current = {t: r for t, r in previous.items() if t not in changes.gone}
    for record in fetched:
        old = previous.get(record.task_id)
        if record.status == STATUS_OK and old != record:
            if old is None or old.status != STATUS_OK:
                summary.new += 1
            else:
                summary.updated += 1
        current[record.task_id] = record
    summary.removed = sum(1 for t in removed if previous[t].status == STATUS_OK)
    summary.annotated_tasks = len(current)
    rows = []
    for record in current.values():
        if record.status != STATUS_OK:
            summary.left_out[record.status] += 1
            continue
        rows.append(_row(record, known, memo))
    summary.usable = len(rows)
    summary.unchanged = summary.usable - summary.new - summary.updated
    manifest_rows = [row for row, _ in rows]
    return PullPlan(
        summary,
        fetched,
        removed,
        manifest_rows,
        _render(rows, memo),
        anchor=changes.anchor,
        full=changes.mode.startswith(MODE_FULL),
        corrections=habla_corrections(known.segments, manifest_rows) if write_habla else {},
    )


def _record(task: dict[str, Any], known: LedgerView, memo: PlanMemo) -> tuple[PullRecord, Problem | None]:
    task_id = int(task["id"])
    kept = memo.records.get(task_id)
    if kept is not None and kept[0] is task:
        return kept[1], kept[2]
    record, problem = choose(task), None
    if record.status == STATUS_OK and record.key not in known.segments:
        # Tasks not pushed from here can still be used if their audio is in our archive.
        sha = str((task.get("data") or {}).get("sha256") or "")
        if not sha or not known.archive.contains(sha):
            record = PullRecord(
                record.task_id, record.key, record.annotation_id, record.annotation_updated_at, STATUS_NO_AUDIO, None,
                record.task_updated_at, record.ok_annotations, record.data_json,
            )
            problem = Problem(f"task {record.task_id} ({record.key})", STATUS_NO_AUDIO)
    memo.records[task_id] = (task, record, problem)
    return record, problem


def _row(record: PullRecord, known: LedgerView, memo: PlanMemo) -> tuple[ManifestRow, tuple[str, str]]:
    """The record's manifest row and its lines in the two files."""
    kept = memo.rows.get(record.task_id)
    if kept is not None and kept[0] is record:
        return kept[1], kept[2]
    row = _manifest_row(known.segments.get(record.key), known.archive, record, known.ledger, known.replaced)
    lines = row_lines(row)
    memo.rows[record.task_id] = (record, row, lines)
    return row, lines


def _render(rows: list[tuple[ManifestRow, tuple[str, str]]], memo: PlanMemo) -> dict[str, bytes]:
    if memo.rendered is not None:
        before, rendered = memo.rendered
        if len(before) == len(rows) and all(a is b for a, (b, _) in zip(before, rows, strict=True)):
            return rendered
    rendered = join_lines(rows)
    memo.rendered = ([row for row, _ in rows], rendered)
    return rendered


def _manifest_row(
    segment: SegmentRecord | None, archive: Archive, record: PullRecord, ledger: Ledger, replaced: set[str]
) -> ManifestRow:
    """``replaced``: the keys whose audio changed at some point (:meth:`Ledger.keys_with_history`)."""
    audio = None
    if segment is not None:
        # A WAV Habla rewrote under the same name: the correction belongs to the audio the annotator heard.
        if record.key in replaced:
            audio = ledger.audio_at(record.key, record.annotation_updated_at)
        else:
            audio = segment.sha256, segment.duration
    # The task's data only for what the ledger does not know (parsing it for every row is a tenth of a
    # nothing-new pull of 10,000 tasks).
    data = json.loads(record.data_json) if record.data_json and audio is None else {}
    sha, duration = audio if audio else (str(data.get("sha256")), float(data.get("duration") or 0.0))
    return ManifestRow(
        audio_path=str(archive.path_for(sha)),
        transcript=record.transcript or "",
        duration=duration,
        speaker=segment.speaker if segment else str(data.get("speaker") or ""),
        session=segment.session if segment else str(data.get("session") or ""),
        notes="" if segment is None or segment.transcript_source is None else f"prefill: {segment.transcript_source}",
        segment_key=record.key,
        sha256=sha,
        task_id=record.task_id,
        annotated_at=record.annotation_updated_at or "",
    )


def habla_corrections(segments: dict[str, SegmentRecord], rows: list[ManifestRow]) -> dict[Path, list[Correction]]:
    """The corrections to write into Habla, per session dir (of the segments pushed from this machine)."""
    by_session: dict[Path, list[Correction]] = {}
    for row in rows:
        segment = segments.get(row.segment_key)
        if segment is None:
            continue  # not pushed from this machine: we do not know where its Habla session lives
        session_dir = Path(segment.source_path).parent
        by_session.setdefault(session_dir, []).append(Correction(segment.filename, row.transcript, row.annotated_at))
    return by_session
