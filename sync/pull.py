"""``habla-ls sync pull``: Label Studio annotations -> the dataset manifest (and, optionally, Habla).

One transcript per task: the latest (by ``updated_at``) annotation that was not cancelled. A task is
left out, and counted, when every annotation was skipped/cancelled, when the text is empty, or when it
is flagged noise / unintelligible / wrong language. The ledger keeps, per task, the annotation last
used; a pull reports what is new or updated since, and rewrites the manifest only if its bytes change.

Fetching only what changed (facts measured on Label Studio 1.23.2, SQLite, 10,000 annotated tasks):

- Every way an annotation changes (created, updated, cancelled or un-cancelled, deleted, deleted in bulk
  from the Data Manager) sets the task's ``updated_at`` to the server's clock, after the annotation
  itself is written. The Data Manager filters tasks on it and, asked for ``include=id,updated_at,...``
  only, lists ~0.3 ms of server time per task (whatever the fields asked for); a count costs ~0.03 s.
- The full JSON export costs ~1.2 ms of server time per task; an export snapshot ~0.9 ms.

So the first pull (or ``full=True``) takes a snapshot of every annotated task, from the server's time
(its HTTP ``Date``) at an answer given before the snapshot began. Each pull then lists the tasks updated
after that time, or after the previous pull's *anchor*, minus :data:`SAFETY_MARGIN`, compares each
one's ``updated_at`` and annotation count with what the snapshot or the ledger saw, and exports only
those that differ: a correction saved while the snapshot was being read is fetched by that same pull.
The margin covers a write whose timestamp was taken before we looked but that became visible after
(SQLite waits up to 5 s for a lock; the ``Date`` header has whole seconds), so an annotation update is
never skipped. Tasks deleted outright leave no ``updated_at`` behind: two count queries over the tasks
*not* listed (how many are annotated, and their non-cancelled annotations in all) must match the ledger,
else every annotated task is listed and compared once (a reconciliation) and the ones gone are removed.

After a bulk import every task is in the listing's window, so the first pull's listing costs a third
of the snapshot. Label Studio is a separate process: it is read from background threads, in the order
above (:class:`_ChangeFinder`), while the caller's thread turns the snapshot into records, manifest
rows and the manifest's bytes; the listing's findings then redo only the tasks it showed changed.
Nothing is written before the listing is in: the ledger, then the manifest, are written once, as before.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

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
from sync.manifest import ManifestRow, join_lines, row_lines, write_manifest

log = logging.getLogger(__name__)
_T = TypeVar("_T")

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
    """Reads Label Studio in background threads while the caller works on what has arrived.

    :meth:`start` sends the reads off: one thread takes the snapshot (first pull, ``full``) and then lists
    the tasks touched since it began; another counts the quiet region as the listing starts (a write
    between the counts and the listing's read can only make them disagree with the ledger, and then the
    pull reconciles: so they need not come one after the other). The anchor is the server's time at the
    last answer before the listing was asked for. :meth:`read` gives the tasks as the snapshot has them;
    :meth:`finish` waits for the rest and fetches what the listing shows changed. In between, the caller
    turns the snapshot into records while Label Studio, a separate process, lists (~0.3 ms of server time
    per task, and after a bulk import every task is in the window). Only the background threads read
    between :meth:`start` and :meth:`finish`; what they bring back is applied in the caller's thread.
    """

    def __init__(self, client: LabelStudioClient, project_id: int, known: dict[int, Mark | None]):
        self.client = client
        self.project_id = project_id
        self.state: dict[int, Mark | None] = dict(known)  # what we know each annotated task to be now
        self.changes = Changes()
        # The snapshot's text, in a one-item list that read() empties: the bytes go once parsed.
        self._snapshot: Future[list[bytes]] | None = None
        self._listing: Future[tuple[datetime | None, list[TaskMark]]] | None = None
        self._counts: Future[tuple[int, int, datetime | None] | None] | None = None
        self._since: datetime | None = None

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

    def _snapshot_then_listing(
        self, snapshot: Future[list[bytes]] | None, since: datetime, anchor: datetime | None
    ) -> tuple[datetime | None, list[TaskMark]]:
        """In a reader thread: the snapshot when one is due (handed over through ``snapshot`` as soon as
        it is in), then the listing; (the anchor, the listing)."""
        if snapshot is not None:
            try:
                snapshot.set_result([self.client.read_snapshot(self.project_id)])
            except BaseException as exc:
                snapshot.set_exception(exc)
                raise
            anchor = self.client.answered_at() or anchor  # the end of the snapshot: still before the listing
        marks = self.client.task_marks(self.project_id, filters=[updated_filter("greater", since)])
        return anchor, marks

    def _quiet_counts(
        self, snapshot: Future[list[bytes]] | None, since: datetime
    ) -> tuple[int, int, datetime | None] | None:
        """In the other reader thread, once the snapshot is in (as the listing starts): annotated_until."""
        if snapshot is not None and snapshot.exception() is not None:
            return None  # the snapshot failed: read() raises its error
        return self.annotated_until(since)

    def start(self, anchor: str | None, full: bool, server_time: datetime | None = None) -> None:
        """Sends the reads off. ``server_time``: the server's clock at an answer it gave before this call
        (else one more request asks for it); a snapshot holds every write committed before that."""
        if server_time is None:
            server_time = self.client.count_tasks(self.project_id).server_time
        if not full and anchor is not None and all(mark is not None for mark in self.state.values()):
            self._since = datetime.strptime(anchor, DM_DATETIME_FORMAT).replace(tzinfo=UTC) - SAFETY_MARGIN
        else:
            self.changes.mode = MODE_FULL
            if server_time is None:  # no Date header: no anchor, the next pull is a full one again
                self._snapshot = _in_background(lambda: [self.client.read_snapshot(self.project_id)])
                return
            self._snapshot = Future()
            self._since = server_time - SAFETY_MARGIN
        self._listing = _in_background(partial(self._snapshot_then_listing, self._snapshot, self._since, server_time))
        self._counts = _in_background(partial(self._quiet_counts, self._snapshot, self._since))

    def read(self) -> Changes:
        """The changes as far as read without the listing: the snapshot's tasks (none when incremental)."""
        if self._snapshot is not None:
            snapshot, self._snapshot = self._snapshot, None
            self.take(self.client.parse_snapshot(snapshot.result().pop(), self.project_id), None)
        return self.changes

    def finish(self) -> Changes:
        """Every change: the listing's findings fetched, deletions found, the next anchor set."""
        self.read()
        if self._listing is None or self._counts is None or self._since is None:
            return self.changes
        anchor, marks = self._listing.result()
        counts = self._counts.result()
        if counts is None:
            return self.changes  # not reached: read() raised the snapshot's error
        region_tasks, region_ok, _ = counts
        since_text = self._since.strftime(DM_DATETIME_FORMAT)
        before_listing = dict(self.state)
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
        self.changes.anchor = anchor.strftime(DM_DATETIME_FORMAT) if anchor else None
        return self.changes

    def run(self, anchor: str | None, full: bool, server_time: datetime | None = None) -> Changes:
        self.start(anchor, full, server_time)
        return self.finish()


def _in_background(work: Callable[[], _T]) -> Future[_T]:
    """Runs ``work`` in a daemon thread: a pull that fails or is interrupted does not wait for Label Studio
    to answer a read it no longer needs."""
    done: Future[_T] = Future()

    def run() -> None:
        try:
            done.set_result(work())
        except BaseException as exc:  # handed to whoever waits on it
            done.set_exception(exc)

    threading.Thread(target=run, name="habla-ls-pull-reader", daemon=True).start()
    return done


def _known(previous: dict[int, PullRecord]) -> dict[int, Mark | None]:
    return {
        task_id: (record.task_updated_at, record.ok_annotations)
        if record.task_updated_at and record.ok_annotations is not None
        else None
        for task_id, record in previous.items()
    }


def find_changes(
    client: LabelStudioClient, project_id: int, previous: dict[int, PullRecord], anchor: str | None, *, full: bool = False
) -> Changes:
    """What changed in Label Studio since the pull that left ``previous`` and ``anchor`` in the ledger."""
    return _ChangeFinder(client, project_id, _known(previous)).run(anchor, full)


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
            found_at = client.answered_at()  # the server's clock before anything below reads it
            previous = ledger.pulls(project_id)
            finder = _ChangeFinder(client, project_id, _known(previous))
            finder.start(ledger.pull_anchor(project_id), full, found_at)
            planner = _Planner(settings, ledger, previous)  # meanwhile Label Studio makes the snapshot
            planner.plan(finder.read())  # meanwhile it lists what was touched since the snapshot began
            changes = finder.finish()
            plan = planner.plan(changes)  # redoes only the tasks the listing changed
            return _commit(settings, ledger, project_id, changes, plan, planner, write_habla)
    finally:
        if own_client:
            client.close()


@dataclass
class _Plan:
    summary: PullSummary
    fetched: list[PullRecord]  # records of the exported tasks, to save
    removed: list[int]  # known task ids with no annotation left, to delete
    rows: list[ManifestRow]
    rendered: dict[str, bytes]  # the manifest files' bytes


class _Planner:
    """Turns what a pull read into ledger records and manifest rows, without writing anything.

    Planned twice: first on the snapshot while Label Studio still lists the tasks touched during it, then on
    the final changes. Records, rows and the rows' lines in the manifest files are kept per task and reused
    while their input is the very same object, so the second plan redoes only the tasks the listing changed
    (usually none) and joins the lines again.
    """

    def __init__(self, settings: Any, ledger: Ledger, previous: dict[int, PullRecord]):
        self.ledger = ledger
        self.previous = previous
        self.archive = Archive(Path(settings.archive_dir).resolve())  # resolved once: rows hold absolute paths
        self.segments = {segment.key: segment for segment in ledger.segments()}
        self.replaced = ledger.keys_with_history()
        self._records: dict[int, tuple[dict[str, Any], PullRecord, Problem | None]] = {}
        self._rows: dict[int, tuple[PullRecord, ManifestRow, tuple[str, str]]] = {}
        self._rendered: tuple[list[ManifestRow], dict[str, bytes]] | None = None

    def record(self, task: dict[str, Any]) -> tuple[PullRecord, Problem | None]:
        task_id = int(task["id"])
        known = self._records.get(task_id)
        if known is not None and known[0] is task:
            return known[1], known[2]
        record, problem = choose(task), None
        if record.status == STATUS_OK and record.key not in self.segments:
            # Tasks not pushed from here can still be used if their audio is in our archive.
            sha = str((task.get("data") or {}).get("sha256") or "")
            if not sha or not self.archive.contains(sha):
                record = PullRecord(
                    record.task_id, record.key, record.annotation_id, record.annotation_updated_at, STATUS_NO_AUDIO, None,
                    record.task_updated_at, record.ok_annotations, record.data_json,
                )
                problem = Problem(f"task {record.task_id} ({record.key})", STATUS_NO_AUDIO)
        self._records[task_id] = (task, record, problem)
        return record, problem

    def row(self, record: PullRecord) -> tuple[ManifestRow, tuple[str, str]]:
        """The record's manifest row and its lines in the two files."""
        known = self._rows.get(record.task_id)
        if known is not None and known[0] is record:
            return known[1], known[2]
        row = _manifest_row(self.segments.get(record.key), self.archive, record, self.ledger, self.replaced)
        lines = row_lines(row)
        self._rows[record.task_id] = (record, row, lines)
        return row, lines

    def render(self, rows: list[tuple[ManifestRow, tuple[str, str]]]) -> dict[str, bytes]:
        if self._rendered is not None:
            before, rendered = self._rendered
            if len(before) == len(rows) and all(a is b for a, (b, _) in zip(before, rows, strict=True)):
                return rendered
        rendered = join_lines(rows)
        self._rendered = ([row for row, _ in rows], rendered)
        return rendered

    def plan(self, changes: Changes) -> _Plan:
        previous = self.previous
        summary = PullSummary(project_id=0, mode=changes.mode, listed=changes.listed, fetched=changes.exported)
        fetched: list[PullRecord] = []
        for task in changes.tasks.values():
            record, problem = self.record(task)
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
            rows.append(self.row(record))
        summary.usable = len(rows)
        summary.unchanged = summary.usable - summary.new - summary.updated
        return _Plan(summary, fetched, removed, [row for row, _ in rows], self.render(rows))


def _commit(
    settings: Any, ledger: Ledger, project_id: int, changes: Changes, plan: _Plan, planner: _Planner, write_habla: bool
) -> PullSummary:
    summary = plan.summary
    summary.project_id = project_id
    # Records, removals and the anchor move together: a crash before this line leaves the last pull's state.
    ledger.save_pulls(project_id, plan.fetched, plan.removed, anchor=changes.anchor, full=changes.mode.startswith(MODE_FULL))
    summary.manifest_path = settings.datasets_dir / "manifest.jsonl"
    summary.manifest_changed = write_manifest(settings.datasets_dir, plan.rows, rendered=plan.rendered)
    if write_habla:
        _write_habla(planner.segments, plan.rows, summary)
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
