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
are never read; the summary says which in one line. A pushed segment whose WAV changed on disk under the
same name (:mod:`sync.changed_audio`) gets the new audio archived beside the old, and its task's audio,
sha256, duration and Habla prediction replaced (annotations stay): Label Studio first, the ledger last,
so a crash in between is redone by the next run. When the archive's path below the document root
changes (a document root moved), the tasks' audio URLs are rewritten once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ml_backend.audio import AudioError
from sync.archive import Archive, ArchivedClip
from sync.changed_audio import AudioChange, Stat, file_stat, find_audio_changes
from sync.habla import (
    SOURCE_RANK,
    Problem,
    Segment,
    SkippedDir,
    prefill_score,
    scan_recordings,
    skipped_dirs_line,
)
from sync.labelling_config import (
    DATA_AUDIO,
    DATA_CONFIDENCE,
    DATA_DURATION,
    DATA_EXT_ID,
    DATA_RECORDED_AT,
    DATA_SEGMENT,
    DATA_SESSION,
    DATA_SHA256,
    DATA_SPEAKER,
    DATA_TRANSLATION,
    LABEL_CONFIG,
    SAMPLING_SEQUENTIAL,
    recorded_at_text,
    transcription_result,
)
from sync.ledger import Ledger, SegmentRecord, now_iso
from sync.ls_client import LabelStudioAuthError, LabelStudioClient, LabelStudioError, LabelStudioUnreachable
from sync.served_audio import audio_url, check_audio_served, storage_refused

log = logging.getLogger(__name__)

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


@dataclass
class PushSummary:
    project_id: int | None = None
    project_title: str = ""
    project_created: bool = False
    dry_run: bool = False
    found: int = 0  # segments (WAVs) seen in the selected sessions
    new: int = 0  # tasks created by this run (or that would be, in a dry run)
    already: int = 0  # segments that already had a task
    recovered: int = 0  # keys a crashed run had imported but not recorded, found in Label Studio
    refreshed: int = 0  # existing tasks given a better prefill (e.g. ground truth written since)
    page_updated: bool = False  # an existing project got this release's labelling page
    page_error: str = ""  # why it could not (the push itself goes on)
    context_refreshed: int = 0  # existing tasks whose shown context (translation, time, ...) was updated
    not_pushed_limit: int = 0  # new segments left for a later run by --limit
    audio_updated: int = 0  # tasks given new audio because their WAV changed on disk (or would be, dry run)
    audio_urls_fixed: int = 0  # tasks whose audio URL was rewritten for a moved document root
    skipped: list[Problem] = field(default_factory=list)
    skipped_dirs: list[SkippedDir] = field(default_factory=list)  # not Habla sessions: never read
    converted: list[str] = field(default_factory=list)

    def skip_reasons(self) -> Counter[str]:
        return Counter(_reason_kind(p.reason) for p in self.skipped)

    def lines(self) -> list[str]:
        verb = "would push" if self.dry_run else "pushed"
        project = f"project {self.project_title!r}" + (f" (id {self.project_id})" if self.project_id else " (new)")
        out = [
            f"{project}: {self.found} segments found; {verb} {self.new} new, {self.already} already there, "
            f"{len(self.skipped)} skipped"
        ]
        if self.recovered:
            out.append(f"recovered {self.recovered} tasks an interrupted push had created (no duplicates made)")
        if self.refreshed:
            out.append(f"updated the prefilled transcript of {self.refreshed} tasks (better Habla transcript now)")
        if self.page_updated:
            out.append("updated the project's labelling page to this release's")
        if self.page_error:
            out.append(f"kept the project's old labelling page: {self.page_error}")
        if self.context_refreshed:
            out.append(f"updated what the labelling page shows for {self.context_refreshed} existing tasks")
        if self.not_pushed_limit:
            out.append(f"{self.not_pushed_limit} new segments left for a later run (--limit)")
        if self.audio_updated:
            verb = "would update" if self.dry_run else "updated"
            out.append(
                f"{verb} the audio of {self.audio_updated} tasks whose WAV changed on disk (annotations kept; "
                "the old audio stays in the archive)"
            )
        if self.audio_urls_fixed:
            out.append(f"rewrote the audio URL of {self.audio_urls_fixed} tasks (the archive moved below the document root)")
        if line := skipped_dirs_line(self.skipped_dirs):
            out.append(line)
        if self.converted:
            out.append(f"{len(self.converted)} clips converted to 16 kHz mono on the way into the archive")
        for reason, count in sorted(self.skip_reasons().items()):
            out.append(f"  skipped {count}: {reason}")
        return out


def _reason_kind(reason: str) -> str:
    """Groups reasons for the summary: the text before any detail in parentheses or after a semicolon."""
    return reason.split(" (")[0].split(";")[0].strip()


def context_data(segment: Segment) -> dict[str, Any]:
    """The task data the labelling page shows about where a clip comes from (may change as Habla
    writes its files: a live session gets its metadata, and so its translations, when it stops)."""
    return {
        DATA_SESSION: segment.session,
        DATA_SEGMENT: segment.filename,
        DATA_SPEAKER: segment.speaker,
        DATA_RECORDED_AT: recorded_at_text(segment.recorded_at, exact=segment.recorded_at_exact),
        DATA_TRANSLATION: segment.translation or "",
    }


def build_task(segment: Segment, clip: ArchivedClip, relative_path: str) -> dict[str, Any]:
    """The Label Studio task for one segment, with Habla's best transcript as a prediction."""
    task: dict[str, Any] = {
        "data": {
            DATA_AUDIO: audio_url(relative_path),
            DATA_EXT_ID: segment.key,
            **context_data(segment),
            DATA_CONFIDENCE: "",  # the served model's, written by a round
            DATA_DURATION: round(clip.duration, 3),
            DATA_SHA256: clip.sha256,
        }
    }
    prediction = build_prediction(segment)
    if prediction is not None:
        task["predictions"] = [prediction]
    return task


def build_prediction(segment: Segment) -> dict[str, Any] | None:
    if not segment.transcript:
        return None  # nothing from Habla yet: the ML backend fills it
    prediction: dict[str, Any] = {
        "model_version": segment.transcript_source,
        "result": transcription_result(segment.transcript),
    }
    score = prefill_score(segment.habla_confidence, human_corrected=segment.transcript_source == "habla-corrected")
    if score is not None:
        prediction["score"] = round(score, 4)
    return prediction


def reconcile(client: LabelStudioClient, ledger: Ledger, project_id: int, task_count: int | None = None) -> int:
    """Settles keys an interrupted run left pending, and adopts tasks the ledger does not know.

    ``task_count``: the project's tasks in Label Studio, if already known (else asked for). Returns how
    many tasks were found in Label Studio and recorded instead of being imported again.
    """
    recovered = 0
    pending = ledger.pending_keys(project_id)
    if pending:
        found = client.tasks_by_ext_id(project_id, pending)
        for key, ids in found.items():
            if len(ids) > 1:
                log.warning("%s has %d tasks in Label Studio (%s); using %d", key, len(ids), ids, ids[0])
        ledger.commit_tasks(project_id, {key: ids[0] for key, ids in found.items()})
        ledger.forget_pending(project_id, [k for k in pending if k not in found])
        recovered += len(found)
    # More tasks in Label Studio than the ledger knows: the ledger was lost or another machine pushed.
    # Listing every ext_id is the only way to be sure, and is needed only then.
    known = ledger.task_map(project_id)
    if task_count is None:
        task_count = client.task_count(project_id)
    if task_count > len(known):
        adopted = {k: ids[0] for k, ids in client.all_ext_ids(project_id).items() if k not in known}
        if adopted:
            ledger.commit_tasks(project_id, adopted)
            recovered += len(adopted)
    return recovered


def _segment_record(segment: Segment, clip: ArchivedClip, stat: Stat | None = None) -> SegmentRecord:
    return SegmentRecord(
        key=segment.key,
        session=segment.session,
        filename=segment.filename,
        sha256=clip.sha256,
        duration=round(clip.duration, 3),
        speaker=segment.speaker,
        transcript_source=segment.transcript_source,
        source_path=str(segment.path.resolve()),
        source_size=stat[0] if stat else None,
        source_mtime_ns=stat[1] if stat else None,
    )


def _chunks(items: Sequence[Segment], size: int) -> list[Sequence[Segment]]:
    return [items[i : i + size] for i in range(0, len(items), max(1, size))]


def push(
    settings: Any,
    options: PushOptions,
    *,
    client: LabelStudioClient | None = None,
    after_import: Callable[[int], None] | None = None,
) -> PushSummary:
    """Pushes new segments; see the module docstring. ``after_import(n)`` runs after each batch import,
    before the ledger commit (a place where tests inject a crash)."""
    summary = PushSummary(project_title=settings.project_title, dry_run=options.dry_run)
    scan = scan_recordings(options.recordings, sessions=options.sessions)
    summary.skipped.extend(scan.problems)
    summary.skipped_dirs = scan.skipped_dirs
    segments = scan.segments
    summary.found = len(segments)
    archive = Archive(settings.archive_dir)

    with Ledger(settings.ledger_path) as ledger:
        if options.dry_run:
            return _dry_run(settings, options, ledger, archive, segments, summary)

        own_client = client is None
        client = client or LabelStudioClient.from_settings(settings)
        try:
            document_root = settings.document_root
            settings.archive_dir.mkdir(parents=True, exist_ok=True)
            archive.relative_path("00" * 32, document_root)  # fails early and clearly if misconfigured
            # One call finds the project and says what the page and the reconciliation need to know (and
            # whether the server answers and takes the token).
            project, created = client.ensure_project(
                settings.project_title, LABEL_CONFIG, fields=PROJECT_FIELDS, sampling=SAMPLING_SEQUENTIAL
            )
            project_id = int(project["id"])
            summary.project_id, summary.project_created = project_id, created
            if not created:
                _update_page(client, project_id, project.get("label_config"), summary)
            ledger.remember_project(settings.label_studio_url, settings.project_title, project_id)
            try:
                client.ensure_local_storage(project_id, str(settings.archive_dir.resolve()))
            except (LabelStudioUnreachable, LabelStudioAuthError):
                raise
            except LabelStudioError as exc:
                raise storage_refused(exc, settings.archive_dir.resolve(), document_root) from None

            summary.recovered = reconcile(client, ledger, project_id, project.get("task_number"))
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
            summary.audio_urls_fixed = _repair_audio_urls(client, ledger, archive, document_root, project_id, bool(pushed))
            summary.audio_updated = _apply_audio_changes(
                client, ledger, archive, document_root, project_id, pushed, changes.changed, summary
            )
            renewed = {change.segment.key for change in changes.changed}
            existing = [s for s in existing if s.key not in renewed]
            better = _better_prefills(ledger, project_id, existing)
            summary.refreshed = _refresh_prefills(client, ledger, project_id, better)
            # After a page upgrade every existing task may lack what the new page shows; otherwise only
            # tasks whose Habla files changed (which is when a prefill gets better) need a look.
            summary.context_refreshed = _refresh_context(
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


def _archive_batch(
    archive: Archive, document_root: Path, batch: Sequence[Segment], summary: PushSummary
) -> tuple[list[SegmentRecord], list[dict[str, Any]], list[Segment]]:
    records, tasks, kept = [], [], []
    for segment in batch:
        try:
            stat = file_stat(segment.path)  # before reading: a later rewrite shows as a change next run
            clip = archive.add_file(segment.path)
        except OSError as exc:
            summary.skipped.append(Problem(str(segment.path), f"unreadable file ({exc.strerror or exc.__class__.__name__})"))
            continue
        except AudioError as exc:
            summary.skipped.append(Problem(str(segment.path), str(exc)))
            continue
        if clip.note:
            summary.converted.append(f"{segment.path}: {clip.note}")
        records.append(_segment_record(segment, clip, stat))
        tasks.append(build_task(segment, clip, archive.relative_path(clip.sha256, document_root)))
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


def _repair_audio_urls(
    client: LabelStudioClient, ledger: Ledger, archive: Archive, document_root: Path, project_id: int, has_tasks: bool
) -> int:
    """Rewrites the audio URLs of the project's tasks when the archive's path below the document root is
    not the one they were written with (a document root moved, or a ledger from before this was noted).
    Lists every task only then; returns how many were rewritten."""
    prefix = archive.relative_root(document_root)
    if ledger.audio_prefix(project_id) == prefix:
        return 0
    fixed = 0
    if has_tasks:
        for task_id, data in client.iter_task_data(project_id):
            sha = str(data.get(DATA_SHA256) or "")
            if not sha or not archive.contains(sha):
                continue  # not audio from this archive: not ours to move
            url = audio_url(archive.relative_path(sha, document_root))
            if data.get(DATA_AUDIO) != url:
                client.patch_task_data(task_id, {**data, DATA_AUDIO: url})
                fixed += 1
    ledger.set_audio_prefix(project_id, prefix)
    return fixed


def _apply_audio_changes(
    client: LabelStudioClient,
    ledger: Ledger,
    archive: Archive,
    document_root: Path,
    project_id: int,
    task_ids: dict[str, int],
    changes: Sequence[AudioChange],
    summary: PushSummary,
) -> int:
    """Points each changed segment's task at its new audio: data (audio URL, sha256, duration, context; the
    served model's confidence cleared), predictions (those of the old audio deleted, Habla's current
    transcript added); annotations are left alone. Label Studio first, then the ledger (which keeps the old
    audio in its history): a crash in between leaves the file looking changed, and the next run redoes it."""
    updated = 0
    for change in changes:
        segment, clip = change.segment, change.clip
        assert clip is not None
        task_id = task_ids[segment.key]
        try:
            task = client.get_task(task_id)
            data = {
                **(task.get("data") or {}),
                **context_data(segment),
                DATA_AUDIO: audio_url(archive.relative_path(clip.sha256, document_root)),
                DATA_SHA256: clip.sha256,
                DATA_DURATION: round(clip.duration, 3),
                DATA_CONFIDENCE: "",  # the served model's, of the old audio
            }
            patched = client.patch_task_data(task_id, data) or {}
            for old in task.get("predictions") or []:
                if isinstance(old, dict) and old.get("id") is not None:
                    client.delete_prediction(int(old["id"]))
            prediction = build_prediction(segment)
            if prediction is not None:
                client.create_predictions(project_id, [{"task": task_id, **prediction}])
        except (LabelStudioUnreachable, LabelStudioAuthError):
            raise
        except LabelStudioError as exc:
            summary.skipped.append(
                Problem(f"task {task_id} ({segment.key})", f"its WAV changed on disk but the task could not be updated: {exc}")
            )
            continue
        # Label Studio's clock, like the annotations' times that the history is compared with.
        replaced_at = str(patched.get("updated_at") or now_iso("microseconds"))
        ledger.add_segments([_segment_record(segment, clip, change.stat)], replaced_at=replaced_at)
        ledger.set_prefill_sources(project_id, {segment.key: segment.transcript_source})
        updated += 1
    return updated


def _update_page(client: LabelStudioClient, project_id: int, current: str | None, summary: PushSummary) -> None:
    """Gives a project made by an older release this release's labelling page (``current``: the page it
    has, None if not known yet). The control and object names never change, so Label Studio accepts it
    over existing annotations; if it still refuses (a config edited by hand in Label Studio, say), the
    push goes on and says why."""
    if current is None:
        current = client.get_project(project_id).get("label_config")
    if (current or "").strip() == LABEL_CONFIG.strip():
        return
    try:
        client.update_project(project_id, label_config=LABEL_CONFIG)
    except LabelStudioError as exc:
        summary.page_error = str(exc)
        log.warning("project %s keeps its labelling page: %s", project_id, exc)
        return
    summary.page_updated = True


def _refresh_context(
    client: LabelStudioClient, project_id: int, task_ids: dict[str, int], segments: Sequence[Segment]
) -> int:
    """Updates the shown context (see context_data) of existing tasks where it differs; keeps every
    other data key (a round's priority and confidence). Returns how many tasks changed."""
    wanted = {task_ids[s.key]: context_data(s) for s in segments if s.key in task_ids}
    if not wanted:
        return 0
    changed = 0
    for task_id, data in client.iter_task_data(project_id):
        context = wanted.get(task_id)
        if context is None or all(data.get(k) == v for k, v in context.items()):
            continue
        client.patch_task_data(task_id, {**data, **context})
        changed += 1
    return changed


def _better_prefills(ledger: Ledger, project_id: int, segments: Sequence[Segment]) -> list[Segment]:
    """Pushed segments whose Habla transcript got better since they were pushed (a live session pushed
    before Habla wrote its ground truth, or a correction made in Habla's own page)."""
    sources = ledger.prefill_sources(project_id)
    return [
        s
        for s in segments
        if s.transcript and SOURCE_RANK.get(s.transcript_source, 0) > SOURCE_RANK.get(sources.get(s.key), 0)
    ]


def _refresh_prefills(client: LabelStudioClient, ledger: Ledger, project_id: int, better: Sequence[Segment]) -> int:
    """Adds a prediction of Habla's better transcript to each of these pushed segments' tasks."""
    task_ids = ledger.task_map(project_id)
    if not better:
        return 0
    predictions = []
    for segment in better:
        prediction = build_prediction(segment)
        if prediction is not None:
            predictions.append({"task": task_ids[segment.key], **prediction})
    client.create_predictions(project_id, predictions)
    ledger.set_prefill_sources(project_id, {s.key: s.transcript_source for s in better})
    return len(predictions)


def _dry_run(
    settings: Any, options: PushOptions, ledger: Ledger, archive: Archive, segments: list[Segment], summary: PushSummary
) -> PushSummary:
    """What a push would do, from the ledger alone: no server, no archive writes."""
    project_id = ledger.project_id(settings.label_studio_url, settings.project_title)
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
        except OSError as exc:
            summary.skipped.append(Problem(str(segment.path), f"unreadable file ({exc.strerror or exc})"))
            continue
        except AudioError as exc:
            summary.skipped.append(Problem(str(segment.path), str(exc)))
            continue
        summary.new += 1
    return summary
