"""``habla-ls sync push``: Habla segments -> archive -> Label Studio tasks with a prefilled transcript.

Order of work for each batch, chosen so that a crash at any point loses nothing and duplicates nothing:

1. copy the audio into the content-addressed archive (atomic renames) and record the segments;
2. mark the batch's keys *pending* in the ledger (one transaction);
3. import the batch into Label Studio (one call, task ids returned in order);
4. commit the task ids (one transaction).

A run that dies between 3 and 4 leaves pending keys; the next run asks Label Studio which of them
already have a task (by ``data.ext_id``) and commits those instead of importing them again. While
batch N is imported, batch N+1 is already being archived (the import waits on the server, the archive
on the disk), so a push costs little more than Label Studio's own import time.

Before the first task of a run is imported or changed, one archived clip is fetched through Label Studio
as the labelling page would fetch it (:mod:`sync.served_audio`): if Label Studio does not serve it (its
document root differs from habla-ls'), the push stops with both roots named, having changed nothing.

Dirs of the recordings dir that are not Habla sessions (Habla's ``processed/`` debug copies above all)
are never read; the summary says which in one line. What a push does to the tasks it made before (new
audio for a rewritten WAV, a better prefill, a moved document root) is in :mod:`sync.existing_tasks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ml_backend.audio import AudioError
from sync.archive import Archive
from sync.changed_audio import AudioChange, file_stat, find_audio_changes
from sync.existing_tasks import (
    apply_audio_changes,
    better_prefills,
    reconcile,
    refresh_context,
    refresh_prefills,
    repair_audio_urls,
    update_page,
)
from sync.habla import Problem, Segment, scan_recordings
from sync.labelling_config import LABEL_CONFIG, SAMPLING_SEQUENTIAL
from sync.ledger import Ledger
from sync.ledger_records import SegmentRecord
from sync.listening import page_audio
from sync.ls_client import LabelStudioClient
from sync.ls_errors import LabelStudioAuthError, LabelStudioError, LabelStudioUnreachable
from sync.places import LabelStudioProject, WorkPaths
from sync.push_summary import PushSummary
from sync.segment_tasks import build_task, segment_record
from sync.served_audio import check_audio_served, storage_refused

DEFAULT_BATCH_SIZE = 1000  # Label Studio imports 1,000 tasks with predictions in ~1 s
# What a push reads of its project: the page it has, and how many tasks (more than the ledger knows:
# tasks to adopt). Counts other than task_number would cost the server a query each.
PROJECT_FIELDS = "id,title,label_config,task_number"


@dataclass(frozen=True)
class PushOptions:
    recordings: Path
    sessions: tuple[str, ...] = ()
    limit: int | None = None  # at most this many new segments
    batch_size: int = DEFAULT_BATCH_SIZE
    dry_run: bool = False
    progress: bool = True


def push(
    project: LabelStudioProject,
    paths: WorkPaths,
    options: PushOptions,
    *,
    client: LabelStudioClient | None = None,
    after_import: Callable[[int], None] | None = None,
) -> PushSummary:
    """Pushes new segments into ``project``, keeping the archive and the ledger of ``paths``; see the module
    docstring. ``after_import(n)`` runs after each batch import, before the ledger commit (a place where
    tests inject a crash)."""
    summary = PushSummary(project_title=project.title, dry_run=options.dry_run)
    scan = scan_recordings(options.recordings, sessions=options.sessions)
    summary.skipped.extend(scan.problems)
    summary.skipped_dirs = scan.skipped_dirs
    segments = scan.segments
    summary.found = len(segments)
    archive = Archive(paths.archive_dir)

    with Ledger(paths.ledger_path) as ledger:
        if options.dry_run:
            return _dry_run(project, options, ledger, archive, segments, summary)

        own_client = client is None
        client = client or LabelStudioClient.for_project(project)
        try:
            document_root = project.document_root
            paths.archive_dir.mkdir(parents=True, exist_ok=True)
            archive.relative_path("00" * 32, document_root)  # fails early and clearly if misconfigured
            # One call finds the project and says what the page and the reconciliation need to know (and
            # whether the server answers and takes the token).
            found, created = client.ensure_project(
                project.title, LABEL_CONFIG, fields=PROJECT_FIELDS, sampling=SAMPLING_SEQUENTIAL
            )
            project_id = int(found["id"])
            summary.project_id, summary.project_created = project_id, created
            if not created:
                update_page(client, project_id, found.get("label_config"), summary, archive, document_root)
            ledger.remember_project(project.url, project.title, project_id)
            try:
                client.ensure_local_storage(project_id, str(paths.archive_dir.resolve()))
            except (LabelStudioUnreachable, LabelStudioAuthError):
                raise
            except LabelStudioError as exc:
                raise storage_refused(exc, paths.archive_dir.resolve(), document_root) from None

            summary.recovered = reconcile(client, ledger, project_id, found.get("task_number"))
            pushed = ledger.task_map(project_id)
            todo = [s for s in segments if s.key not in pushed]
            summary.already = len(segments) - len(todo)
            if options.limit is not None and len(todo) > options.limit:
                summary.not_pushed_limit = len(todo) - options.limit
                todo = todo[: options.limit]
            existing = [s for s in segments if s.key in pushed]
            changes = find_audio_changes(ledger, archive, existing)
            summary.skipped.extend(changes.problems)
            if changes.touched:
                ledger.set_source_stats(changes.touched)

            def check_served(sha256: str) -> None:
                check_audio_served(
                    client, project_id, archive.relative_path(sha256, document_root), document_root, archive.path_for(sha256)
                )

            # With no task yet, the first batch's first clip is fetched before that batch is imported.
            probe = _probe_clip(ledger, archive, changes.changed, existing)
            if probe is not None:
                check_served(probe)
            summary.audio_urls_fixed = repair_audio_urls(client, ledger, archive, document_root, project_id, bool(pushed))
            summary.audio_updated = apply_audio_changes(
                client, ledger, archive, document_root, project_id, pushed, changes.changed, summary
            )
            renewed = {change.segment.key for change in changes.changed}
            existing = [s for s in existing if s.key not in renewed]
            better = better_prefills(ledger, project_id, existing)
            summary.refreshed = refresh_prefills(client, ledger, project_id, better)
            # After a page upgrade every existing task may lack what the new page shows; otherwise only
            # tasks whose Habla files changed (which is when a prefill gets better) need a look.
            summary.context_refreshed = refresh_context(
                client, project_id, pushed, existing if summary.page_updated else better
            )
            _push_batches(
                client, ledger, archive, document_root, project_id, todo, options, summary, after_import,
                check_served=check_served if probe is None else None,
            )
        finally:
            if own_client:
                client.close()
    return summary


def _chunks(items: Sequence[Segment], size: int) -> list[Sequence[Segment]]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


def _archive_batch(
    archive: Archive, document_root: Path, batch: Sequence[Segment], summary: PushSummary
) -> tuple[list[SegmentRecord], list[dict[str, Any]], list[Segment]]:
    records, tasks, kept = [], [], []
    for segment in batch:
        try:
            stat = file_stat(segment.path)  # before reading: a later rewrite shows as a change next run
            clip = archive.add_file(segment.path)
        except (OSError, AudioError) as exc:
            summary.skipped.append(_unusable(segment.path, exc))
            continue
        if clip.note:
            summary.converted.append(f"{segment.path}: {clip.note}")
        records.append(segment_record(segment, clip, stat))
        tasks.append(build_task(segment, clip, page_audio(archive, clip.sha256, document_root)))
        kept.append(segment)
    return records, tasks, kept


def _push_batches(
    client: LabelStudioClient,
    ledger: Ledger,
    archive: Archive,
    document_root: Path,
    project_id: int,
    todo: Sequence[Segment],
    options: PushOptions,
    summary: PushSummary,
    after_import: Callable[[int], None] | None,
    *,
    check_served: Callable[[str], None] | None = None,
) -> None:
    """``check_served(sha256)``, if given, runs once on the first archived clip before anything of the
    first batch reaches the ledger or Label Studio."""
    batches = _chunks(todo, options.batch_size)
    bar = tqdm(total=len(todo), unit="seg", desc="push", disable=not options.progress or not todo, leave=False)
    try:
        # One worker: Label Studio's SQLite must see one writer, and the ledger stays on this thread.
        with ThreadPoolExecutor(max_workers=1) as importer:
            in_flight: tuple[Future, list[Segment]] | None = None

            def settle() -> None:
                future, kept = in_flight
                # If the import failed, it may or may not have happened: the keys stay pending and the next
                # run asks Label Studio.
                ids = future.result()
                if after_import is not None:
                    after_import(len(ids))
                ledger.commit_tasks(project_id, {s.key: task_id for s, task_id in zip(kept, ids, strict=True)})
                summary.new += len(ids)

            for batch in batches:
                records, tasks, kept = _archive_batch(archive, document_root, batch, summary)
                if in_flight is not None:
                    settle()
                    in_flight = None
                if tasks and check_served is not None:
                    check_served(records[0].sha256)
                    check_served = None
                if tasks:
                    ledger.add_segments(records)
                    ledger.mark_pending(project_id, [s.key for s in kept], [s.transcript_source for s in kept])
                    in_flight = (importer.submit(client.import_tasks, project_id, tasks), kept)
                bar.update(len(batch))
            if in_flight is not None:
                settle()
    finally:
        bar.close()


def _probe_clip(
    ledger: Ledger, archive: Archive, changed: Sequence[AudioChange], existing: Sequence[Segment]
) -> str | None:
    """The sha256 of an archived clip to fetch through Label Studio before any task is changed: a changed
    segment's new audio, else what a pushed task points at; None when no task has audio yet."""
    for change in changed:
        if change.clip is not None:
            return change.clip.sha256
    for segment in existing:
        record = ledger.segment(segment.key)
        if record is not None and archive.contains(record.sha256):
            return record.sha256
    return None


def _dry_run(
    project: LabelStudioProject, options: PushOptions, ledger: Ledger, archive: Archive, segments: list[Segment], summary: PushSummary
) -> PushSummary:
    """What a push would do, from the ledger alone: no server, no archive writes."""
    project_id = ledger.project_id(project.url, project.title)
    summary.project_id = project_id
    pushed = ledger.task_map(project_id) if project_id is not None else {}
    todo = [s for s in segments if s.key not in pushed]
    summary.already = len(segments) - len(todo)
    changes = find_audio_changes(ledger, archive, [s for s in segments if s.key in pushed], store=False)
    summary.audio_updated = len(changes.changed)
    summary.skipped.extend(changes.problems)
    if options.limit is not None and len(todo) > options.limit:
        summary.not_pushed_limit = len(todo) - options.limit
        todo = todo[: options.limit]
    for segment in tqdm(todo, unit="seg", desc="check", disable=not options.progress or not todo, leave=False):
        try:
            data = segment.path.read_bytes()
            archive.check(data)
        except (OSError, AudioError) as exc:
            summary.skipped.append(_unusable(segment.path, exc))
            continue
        summary.new += 1
    return summary


def _unusable(path: Path, exc: OSError | AudioError) -> Problem:
    """The one line a skipped file gets, the same in a dry run and a real one."""
    if isinstance(exc, AudioError):
        return Problem(str(path), str(exc))
    return Problem(str(path), f"unreadable file ({exc.strerror or exc.__class__.__name__})")
