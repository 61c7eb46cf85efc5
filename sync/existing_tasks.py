"""What a push does to the tasks it made before: settles an interrupted push's pending keys and adopts
tasks the ledger does not know, gives a project an older release made this release's labelling page, and
brings existing tasks up to date with Habla's files.

A pushed segment whose WAV changed on disk under the same name (:mod:`sync.changed_audio`) gets the new
audio archived beside the old, and its task's audio, sha256, duration and Habla prediction replaced
(annotations stay): Label Studio first, the ledger last, so a crash in between is redone by the next run.
When the archive's path below the document root changes (a document root moved), the tasks' audio URLs are
rewritten once. A task whose Habla transcript got better since it was pushed gets it as a new prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sync.archive import Archive
from sync.changed_audio import AudioChange
from sync.habla import SOURCE_RANK, Problem, Segment
from sync.labelling_config import (
    DATA_CHECK_WORDS,
    DATA_CONFIDENCE,
    DATA_DURATION,
    DATA_SHA256,
    EMPTY_CHECKS,
    LABEL_CONFIG,
)
from sync.ledger import Ledger
from sync.ledger_records import now_iso
from sync.listening import page_audio
from sync.ls_client import LabelStudioClient
from sync.ls_errors import LabelStudioAuthError, LabelStudioError, LabelStudioUnreachable
from sync.push_summary import PushSummary
from sync.segment_tasks import build_prediction, context_data, segment_record

log = logging.getLogger(__name__)


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


def update_page(
    client: LabelStudioClient, project_id: int, current: str | None, summary: PushSummary, archive: Archive,
    document_root: Path,
) -> None:
    """Gives a project made by an older release this release's labelling page (``current``: the page it
    has, None if not known yet). The control and object names never change, so Label Studio accepts it
    over existing annotations; if it still refuses (a config edited by hand in Label Studio, say), the
    push goes on and says why. The tasks get what the new page reads and older tasks lack: the keys of the
    word checks (a page without them shows an error instead of the task) and, for a quiet clip, the louder
    copy to play, and an empty list of check rows becomes the one hidden row the page needs."""
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
    for task_id, data in client.iter_task_data(project_id):
        wanted = {k: v for k, v in EMPTY_CHECKS.items() if k not in data}
        if data.get(DATA_CHECK_WORDS) == []:  # written by a release whose page then stayed blank
            wanted[DATA_CHECK_WORDS] = EMPTY_CHECKS[DATA_CHECK_WORDS]
        sha = str(data.get(DATA_SHA256) or "")
        if sha and archive.contains(sha):
            wanted.update({k: v for k, v in page_audio(archive, sha, document_root).items() if data.get(k) != v})
        if wanted:
            client.patch_task_data(task_id, {**data, **wanted})


def repair_audio_urls(
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
            audio = page_audio(archive, sha, document_root)
            if any(data.get(k) != v for k, v in audio.items()):
                client.patch_task_data(task_id, {**data, **audio})
                fixed += 1
    ledger.set_audio_prefix(project_id, prefix)
    return fixed


def apply_audio_changes(
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
                **page_audio(archive, clip.sha256, document_root),
                DATA_SHA256: clip.sha256,
                DATA_DURATION: round(clip.duration, 3),
                DATA_CONFIDENCE: "",  # the served model's, of the old audio
                **EMPTY_CHECKS,
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
        ledger.add_segments([segment_record(segment, clip, change.stat)], replaced_at=replaced_at)
        ledger.set_prefill_sources(project_id, {segment.key: segment.transcript_source})
        updated += 1
    return updated


def refresh_context(
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


def better_prefills(ledger: Ledger, project_id: int, segments: Sequence[Segment]) -> list[Segment]:
    """Pushed segments whose Habla transcript got better since they were pushed (a live session pushed
    before Habla wrote its ground truth, or a correction made in Habla's own page)."""
    sources = ledger.prefill_sources(project_id)
    return [
        s
        for s in segments
        if s.transcript and SOURCE_RANK.get(s.transcript_source, 0) > SOURCE_RANK.get(sources.get(s.key), 0)
    ]


def refresh_prefills(client: LabelStudioClient, ledger: Ledger, project_id: int, better: Sequence[Segment]) -> int:
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
