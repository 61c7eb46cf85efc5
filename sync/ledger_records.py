"""The rows the ledger (:mod:`sync.ledger`) keeps, as dataclasses: archived segments, their earlier audio,
and what a pull made of each task."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

STATUS_OK = "ok"


def now_iso(timespec: str = "seconds") -> str:
    return datetime.now(UTC).isoformat(timespec=timespec)


@dataclass(frozen=True)
class SegmentRecord:
    key: str
    session: str
    filename: str
    sha256: str
    duration: float
    speaker: str
    transcript_source: str | None
    source_path: str
    archived_at: str = ""
    # The source file as it was when hashed: unchanged size and mtime mean unchanged bytes.
    source_size: int | None = None
    source_mtime_ns: int | None = None


@dataclass(frozen=True)
class AudioVersion:
    """One earlier audio of a segment: in force from ``archived_at`` until ``replaced_at`` (UTC, ISO)."""

    sha256: str
    duration: float
    archived_at: str
    replaced_at: str


@dataclass(frozen=True)
class PullRecord:
    task_id: int
    key: str
    annotation_id: int | None
    annotation_updated_at: str | None
    status: str  # "ok" or the reason the task is left out of the dataset
    transcript: str | None
    # The task as Label Studio showed it when fetched: not part of what the record *means*, so two records
    # with the same annotation compare equal even if the task was touched (e.g. a new prediction).
    task_updated_at: str | None = field(default=None, compare=False)
    ok_annotations: int | None = field(default=None, compare=False)
    data_json: str | None = field(default=None, compare=False)
