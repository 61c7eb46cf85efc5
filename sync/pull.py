"""``habla-ls sync pull``: Label Studio annotations -> the dataset manifest (and, optionally, Habla).

One transcript per task: the latest (by ``updated_at``) annotation that was not cancelled. A task is
left out, and counted, when every annotation was skipped/cancelled, when the text is empty, or when it
is flagged noise / unintelligible / wrong language. The ledger keeps, per task, the annotation last
used; a pull reports what is new or updated since, and rewrites the manifest only if its bytes change.

Fetching only what changed (facts measured on Label Studio 1.23.2):

- Every way an annotation changes (created, updated, cancelled or un-cancelled, deleted, deleted in bulk
  from the Data Manager) sets the task's ``updated_at`` to the server's clock, after the annotation
  itself is written. The Data Manager filters tasks on it and, asked for ``include=id,updated_at,...``
  only, lists ~1.5 ms of server time per task; a filter that matches nothing costs ~0.1 s.
- The full JSON export costs 5-8 ms per task (64 s for 10,000); an export snapshot ~3 ms per task.

So the first pull (or ``full=True``) takes a snapshot of every annotated task. Each pull then lists the
tasks updated after the *anchor* (the server's time, from its HTTP ``Date``, just before the previous
pull looked) minus :data:`SAFETY_MARGIN`, compares each one's ``updated_at`` and annotation count with
what the ledger saw, and exports only those that differ. The margin covers a write whose timestamp was
taken before we looked but that became visible after (SQLite waits up to 5 s for a lock; the ``Date``
header has whole seconds), so an annotation update is never skipped. Tasks deleted outright leave no
``updated_at`` behind: two count queries over the tasks *not* listed (how many are annotated, and
their non-cancelled annotations in all) must match the ledger, else every annotated task is listed and
compared once (a reconciliation) and the ones gone are removed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sync.archive import Archive
from sync.habla import Problem
from sync.habla_writer import Correction, HablaWriteError, write_corrections
from sync.labelling_config import read_result
from sync.ledger import STATUS_OK, Ledger, PullRecord, SegmentRecord
from sync.ls_client import (
    DM_DATETIME_FORMAT,
    LabelStudioClient,
    LabelStudioError,
    TaskMark,
    normalise_time,
    number_filter,
    updated_filter,
)
from sync.manifest import ManifestRow, write_manifest

log = logging.getLogger(__name__)

STATUS_SKIPPED = "skipped or cancelled"
STATUS_EMPTY = "empty transcript"
STATUS_NO_AUDIO = "audio not in the archive"
STATUS_UNKNOWN = "not a habla-ls task (no ext_id)"

SAFETY_MARGIN = timedelta(seconds=10)
# Above this many changed tasks (and half of those known) one snapshot of everything is cheaper than
# exporting them by id (~3 ms vs ~5-8 ms per task on the server).
SNAPSHOT_ABOVE = 1000

MODE_FULL = "full"
MODE_INCREMENTAL = "incremental"


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


def find_project_id(settings: Any, ledger: Ledger, client: LabelStudioClient) -> int:
    project = client.find_project(settings.project_title)
    if project is None:
        raise LabelStudioError(
            f"Label Studio at {client.url} has no project titled {settings.project_title!r}: run `habla-ls sync push` first"
        )
    ledger.remember_project(settings.label_studio_url, settings.project_title, int(project["id"]))
    return int(project["id"])


# -- finding what changed --------------------------------------------------------------------------------


Mark = tuple[str, int]  # (normalised updated_at, non-cancelled annotations): equal marks = nothing to fetch


@dataclass
class Changes:
    """What one pull learned from Label Studio, relative to the ledger."""

    tasks: dict[int, dict[str, Any]] = field(default_factory=dict)  # exported JSON of tasks that changed
    gone: set[int] = field(default_factory=set)  # known tasks with no annotation left (or deleted)
    anchor: str | None = None  # where the next pull starts listing; None: the next pull is a full one
    mode: str = MODE_INCREMENTAL
    listed: int = 0  # tasks Label Studio listed as touched
    exported: int = 0  # task JSONs exported (a task can be exported twice: snapshot, then changed again)


class _ChangeFinder:
    def __init__(self, client: LabelStudioClient, project_id: int, known: dict[int, Mark | None]):
        self.client = client
        self.project_id = project_id
        self.state: dict[int, Mark | None] = dict(known)  # what we know each annotated task to be now
        self.changes = Changes()

    def take(self, exported: list[dict[str, Any]], asked: Iterable[int] | None) -> None:
        """Merges exported tasks; ``asked=None`` means the export holds every annotated task."""
        returned = {int(task["id"]): task for task in exported}
        self.changes.exported += len(returned)
        missing = (set(self.state) if asked is None else set(asked)) - set(returned)
        for task_id in missing:  # asked for, not exported: it has no annotation any more
            self.forget(task_id)
        for task_id, task in returned.items():
            self.state[task_id] = (normalise_time(task.get("updated_at")), int(task.get("total_annotations") or 0))
            self.changes.tasks[task_id] = task
            self.changes.gone.discard(task_id)

    def forget(self, task_id: int) -> None:
        """The task has no annotation any more, or no longer exists."""
        self.state.pop(task_id, None)
        self.changes.tasks.pop(task_id, None)
        self.changes.gone.add(task_id)

    def snapshot(self) -> None:
        self.take(self.client.export_snapshot(self.project_id), None)
        self.changes.mode = MODE_FULL

    def fetch(self, task_ids: set[int]) -> None:
        if len(task_ids) > max(SNAPSHOT_ABOVE, len(self.state) // 2):
            self.snapshot()
        elif task_ids:
            self.take(self.client.export_annotations(self.project_id, task_ids=sorted(task_ids)), task_ids)

    def differing(self, marks: list[TaskMark]) -> set[int]:
        """Listed tasks whose annotations may differ from what we have (unannotated strangers are skipped)."""
        return {
            m.task_id
            for m in marks
            if (m.annotated or m.task_id in self.state) and self.state.get(m.task_id) != (m.updated_at, m.ok_annotations)
        }

    def annotated_until(self, until: datetime) -> tuple[int, int, datetime | None]:
        """(tasks, non-cancelled annotations, server time) of annotated tasks last updated at or before ``until``.

        "Annotated" is total > 0 OR cancelled > 0, but a filter has one conjunction: two AND queries.
        """
        not_after = updated_filter("less_or_equal", until)
        with_ok = self.client.count_tasks(self.project_id, filters=[not_after, number_filter("total_annotations", "greater", 0)])
        only_cancelled = self.client.count_tasks(
            self.project_id,
            filters=[
                not_after,
                number_filter("total_annotations", "equal", 0),
                number_filter("cancelled_annotations", "greater", 0),
            ],
        )
        return with_ok.tasks + only_cancelled.tasks, with_ok.ok_annotations, with_ok.server_time

    def reconcile(self) -> None:
        """Lists every annotated task once: drops the ones gone, fetches the ones that differ."""
        marks = self.client.task_marks(
            self.project_id,
            filters=[number_filter("total_annotations", "greater", 0), number_filter("cancelled_annotations", "greater", 0)],
            conjunction="or",
        )
        self.changes.listed += len(marks)
        present = {m.task_id for m in marks}
        for task_id in set(self.state) - present:
            self.forget(task_id)
        self.fetch(self.differing(marks))
        self.changes.mode += " + reconciled"

    def run(self, anchor: str | None, full: bool) -> Changes:
        if not full and anchor is not None and all(mark is not None for mark in self.state.values()):
            start = datetime.strptime(anchor, DM_DATETIME_FORMAT).replace(tzinfo=UTC)
        else:
            # The server's clock before the snapshot reads anything: writes not in it come after this.
            server_time = self.client.count_tasks(self.project_id).server_time
            self.snapshot()
            if server_time is None:
                return self.changes  # no Date header: no anchor, the next pull is a full one again
            start = server_time
        since = start - SAFETY_MARGIN
        since_text = since.strftime(DM_DATETIME_FORMAT)
        before_listing = dict(self.state)
        # Count the quiet region first: its Date is earlier than the listing's read, so it is the anchor.
        region_tasks, region_ok, server_time = self.annotated_until(since)
        marks = self.client.task_marks(self.project_id, filters=[updated_filter("greater", since)])
        self.changes.listed += len(marks)
        self.fetch(self.differing(marks))
        listed = {m.task_id for m in marks}
        # A task we saw updated after `since` can only have moved later: if it is not listed, it was deleted.
        for task_id, mark in before_listing.items():
            if task_id not in listed and mark is not None and mark[0] > since_text:
                self.forget(task_id)
        quiet = [m for t, m in before_listing.items() if t not in listed and m is not None and m[0] <= since_text]
        if (region_tasks, region_ok) != (len(quiet), sum(m[1] for m in quiet)):
            log.info(
                "project %s: %d annotated tasks (%d annotations) not touched since %s, ledger has %d (%d): reconciling",
                self.project_id, region_tasks, region_ok, since_text, len(quiet), sum(m[1] for m in quiet),
            )
            self.reconcile()
        self.changes.anchor = server_time.strftime(DM_DATETIME_FORMAT) if server_time else None
        return self.changes


def find_changes(
    client: LabelStudioClient, project_id: int, previous: dict[int, PullRecord], anchor: str | None, *, full: bool = False
) -> Changes:
    """What changed in Label Studio since the pull that left ``previous`` and ``anchor`` in the ledger."""
    known: dict[int, Mark | None] = {
        task_id: (record.task_updated_at, record.ok_annotations)
        if record.task_updated_at and record.ok_annotations is not None
        else None
        for task_id, record in previous.items()
    }
    return _ChangeFinder(client, project_id, known).run(anchor, full)


# -- applying them -----------------------------------------------------------------------------------


def pull(
    settings: Any, *, write_habla: bool = False, full: bool = False, client: LabelStudioClient | None = None
) -> PullSummary:
    """One pull; ``full`` re-reads every annotated task instead of only those Label Studio shows as touched."""
    own_client = client is None
    client = client or LabelStudioClient.from_settings(settings)
    try:
        with Ledger(settings.ledger_path) as ledger:
            project_id = find_project_id(settings, ledger, client)
            previous = ledger.pulls(project_id)
            changes = find_changes(client, project_id, previous, ledger.pull_anchor(project_id), full=full)
            return _apply(settings, ledger, project_id, previous, changes, write_habla)
    finally:
        if own_client:
            client.close()


def _apply(
    settings: Any,
    ledger: Ledger,
    project_id: int,
    previous: dict[int, PullRecord],
    changes: Changes,
    write_habla: bool,
) -> PullSummary:
    summary = PullSummary(project_id=project_id, mode=changes.mode, listed=changes.listed, fetched=changes.exported)
    archive = Archive(Path(settings.archive_dir).resolve())  # resolved once: rows hold absolute paths
    segments = {segment.key: segment for segment in ledger.segments()}
    fetched: list[PullRecord] = []
    for task in changes.tasks.values():
        record = choose(task)
        if record.status == STATUS_OK and record.key not in segments:
            # Tasks not pushed from here can still be used if their audio is in our archive.
            sha = str((task.get("data") or {}).get("sha256") or "")
            if not sha or not archive.contains(sha):
                record = PullRecord(
                    record.task_id, record.key, record.annotation_id, record.annotation_updated_at, STATUS_NO_AUDIO, None,
                    record.task_updated_at, record.ok_annotations, record.data_json,
                )
                summary.problems.append(Problem(f"task {record.task_id} ({record.key})", STATUS_NO_AUDIO))
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
    # Records, removals and the anchor move together: a crash before this line leaves the last pull's state.
    ledger.save_pulls(project_id, fetched, removed, anchor=changes.anchor, full=changes.mode.startswith(MODE_FULL))

    rows = []
    replaced = ledger.keys_with_history()
    for record in current.values():
        if record.status != STATUS_OK:
            summary.left_out[record.status] += 1
            continue
        rows.append(_manifest_row(segments.get(record.key), archive, record, ledger, replaced))
    summary.usable = len(rows)
    summary.unchanged = summary.usable - summary.new - summary.updated
    summary.manifest_path = settings.datasets_dir / "manifest.jsonl"
    summary.manifest_changed = write_manifest(settings.datasets_dir, rows)
    if write_habla:
        _write_habla(segments, rows, summary)
    return summary


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


def _write_habla(segments: dict[str, SegmentRecord], rows: list[ManifestRow], summary: PullSummary) -> None:
    by_session: dict[Path, list[Correction]] = {}
    for row in rows:
        segment = segments.get(row.segment_key)
        if segment is None:
            continue  # not pushed from this machine: we do not know where its Habla session lives
        session_dir = Path(segment.source_path).parent
        by_session.setdefault(session_dir, []).append(Correction(segment.filename, row.transcript, row.annotated_at))
    for session_dir, corrections in sorted(by_session.items()):
        try:
            if write_corrections(session_dir, corrections):
                summary.habla_written.append(session_dir)
        except (HablaWriteError, OSError) as exc:
            summary.problems.append(Problem(str(session_dir), str(exc)))
