"""``habla-ls sync pull``: Label Studio annotations -> the dataset manifest (and, optionally, Habla).

One transcript per task: the latest (by ``updated_at``) annotation that was not cancelled. A task is
left out, and counted, when every annotation was skipped/cancelled, when the text is empty, or when it
is flagged noise / unintelligible / wrong language. The ledger keeps, per task, the annotation last
used; a pull reports what is new or updated since, and rewrites the manifest only if its bytes change.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.archive import Archive
from sync.habla import Problem
from sync.habla_writer import Correction, HablaWriteError, write_corrections
from sync.labelling_config import read_result
from sync.ledger import STATUS_OK, Ledger, PullRecord
from sync.ls_client import LabelStudioClient, LabelStudioError
from sync.manifest import ManifestRow, write_manifest

log = logging.getLogger(__name__)

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

    def lines(self) -> list[str]:
        out = [
            f"project {self.project_id}: {self.annotated_tasks} annotated tasks; {self.usable} usable "
            f"({self.new} new, {self.updated} updated, {self.unchanged} unchanged, {self.removed} removed)",
            f"manifest {self.manifest_path} " + ("written" if self.manifest_changed else "unchanged (nothing new)"),
        ]
        for reason, count in sorted(self.left_out.items()):
            out.append(f"  left out {count}: {reason}")
        if self.habla_written:
            out.append(f"wrote {len(self.habla_written)} corrected_ground_truth.json file(s) into Habla's sessions")
        return out


def _timestamp(annotation: dict[str, Any]) -> tuple[str, int]:
    return (str(annotation.get("updated_at") or annotation.get("created_at") or ""), int(annotation.get("id") or 0))


def choose(task: dict[str, Any]) -> PullRecord:
    """The record ``sync pull`` keeps for one exported task (status "ok" or why it is left out)."""
    key = str((task.get("data") or {}).get("ext_id") or "")
    annotations = task.get("annotations") or []
    kept = [a for a in annotations if not a.get("was_cancelled")]
    if not key:
        return PullRecord(int(task["id"]), key, None, None, STATUS_UNKNOWN, None)
    if not kept:
        latest = max(annotations, key=_timestamp) if annotations else {}
        return PullRecord(int(task["id"]), key, latest.get("id"), latest.get("updated_at"), STATUS_SKIPPED, None)
    latest = max(kept, key=_timestamp)
    text, flags = read_result(latest.get("result") or [])
    status = "marked " + " + ".join(flags) if flags else (STATUS_OK if text else STATUS_EMPTY)
    return PullRecord(
        int(task["id"]), key, latest.get("id"), latest.get("updated_at"), status, text if status == STATUS_OK else None
    )


def find_project_id(settings: Any, ledger: Ledger, client: LabelStudioClient) -> int:
    project = client.find_project(settings.project_title)
    if project is None:
        raise LabelStudioError(
            f"Label Studio at {client.url} has no project titled {settings.project_title!r}: run `habla-ls sync push` first"
        )
    ledger.remember_project(settings.label_studio_url, settings.project_title, int(project["id"]))
    return int(project["id"])


def pull(
    settings: Any, *, write_habla: bool = False, client: LabelStudioClient | None = None
) -> PullSummary:
    own_client = client is None
    client = client or LabelStudioClient.from_settings(settings)
    try:
        with Ledger(settings.ledger_path) as ledger:
            project_id = find_project_id(settings, ledger, client)
            exported = client.export_annotations(project_id)
            return _apply(settings, ledger, project_id, exported, write_habla)
    finally:
        if own_client:
            client.close()


def _apply(
    settings: Any, ledger: Ledger, project_id: int, exported: list[dict[str, Any]], write_habla: bool
) -> PullSummary:
    summary = PullSummary(project_id=project_id, annotated_tasks=len(exported))
    archive = Archive(settings.archive_dir)
    previous = ledger.pulls(project_id)
    current: dict[int, PullRecord] = {}
    task_data: dict[int, dict[str, Any]] = {}
    for task in exported:
        record = choose(task)
        if record.status == STATUS_OK and ledger.segment(record.key) is None:
            # Tasks not pushed from here can still be used if their audio is in our archive.
            sha = str((task.get("data") or {}).get("sha256") or "")
            if not sha or not archive.contains(sha):
                record = PullRecord(record.task_id, record.key, record.annotation_id, record.annotation_updated_at, STATUS_NO_AUDIO, None)
                summary.problems.append(Problem(f"task {record.task_id} ({record.key})", STATUS_NO_AUDIO))
        current[record.task_id] = record
        task_data[record.task_id] = task.get("data") or {}

    changed = [r for t, r in current.items() if previous.get(t) != r]
    removed = [t for t in previous if t not in current]
    for record in changed:
        if record.status != STATUS_OK:
            continue
        if previous.get(record.task_id) is None or previous[record.task_id].status != STATUS_OK:
            summary.new += 1
        else:
            summary.updated += 1
    summary.removed = sum(1 for t in removed if previous[t].status == STATUS_OK)
    ledger.save_pulls(project_id, changed, removed)

    rows = []
    for record in current.values():
        if record.status != STATUS_OK:
            summary.left_out[record.status] += 1
            continue
        rows.append(_manifest_row(ledger, archive, record, task_data[record.task_id]))
    summary.usable = len(rows)
    summary.unchanged = summary.usable - summary.new - summary.updated
    summary.manifest_path = settings.datasets_dir / "manifest.jsonl"
    summary.manifest_changed = write_manifest(settings.datasets_dir, rows)
    if write_habla:
        _write_habla(ledger, rows, summary)
    return summary


def _manifest_row(ledger: Ledger, archive: Archive, record: PullRecord, data: dict[str, Any]) -> ManifestRow:
    segment = ledger.segment(record.key)
    sha = segment.sha256 if segment else str(data.get("sha256"))
    return ManifestRow(
        audio_path=str(archive.path_for(sha).resolve()),
        transcript=record.transcript or "",
        duration=segment.duration if segment else float(data.get("duration") or 0.0),
        speaker=segment.speaker if segment else str(data.get("speaker") or ""),
        session=segment.session if segment else str(data.get("session") or ""),
        notes="" if segment is None or segment.transcript_source is None else f"prefill: {segment.transcript_source}",
        segment_key=record.key,
        sha256=sha,
        task_id=record.task_id,
        annotated_at=record.annotation_updated_at or "",
    )


def _write_habla(ledger: Ledger, rows: list[ManifestRow], summary: PullSummary) -> None:
    by_session: dict[Path, list[Correction]] = {}
    for row in rows:
        segment = ledger.segment(row.segment_key)
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
