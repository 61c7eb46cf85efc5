"""Segments whose WAV changed on disk under the same name after they were pushed.

The segment key stays (``<session>/<file>``) but the bytes, and so the sha256, are new. The archive is
content-addressed, so the new audio gets its own file and the old one stays where the ledger's history
and any annotation made on it can find it. Hashing every pushed WAV on every push would cost a read of
the whole recordings dir, so a file is re-read only when its size or mtime differ from what the ledger
noted when it was hashed (a file rewritten in place always gets a new mtime).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ml_backend.audio import AudioError
from sync.archive import Archive, ArchivedClip, sha256_bytes
from sync.habla import Problem, Segment
from sync.ledger import Ledger

Stat = tuple[int, int]  # (size, mtime_ns)


@dataclass(frozen=True)
class AudioChange:
    segment: Segment
    old_sha256: str
    clip: ArchivedClip | None  # the new audio in the archive (None in a dry run: checked, not stored)
    stat: Stat


@dataclass
class AudioChanges:
    changed: list[AudioChange] = field(default_factory=list)
    touched: dict[str, Stat] = field(default_factory=dict)  # re-hashed, same bytes: only the stat is new
    problems: list[Problem] = field(default_factory=list)


def file_stat(path: Path) -> Stat:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def find_audio_changes(ledger: Ledger, archive: Archive, segments: Sequence[Segment], *, store: bool = True) -> AudioChanges:
    """Which of ``segments`` (pushed ones) now hold other audio than the ledger recorded.

    With ``store`` the new audio goes into the archive (atomic, so a crash leaves nothing half-written);
    without it the audio is only checked. A file whose new audio is unusable is a problem, and its task
    keeps the audio it has.
    """
    records = {record.key: record for record in ledger.segments()}
    out = AudioChanges()
    for segment in segments:
        record = records.get(segment.key)
        if record is None:
            continue  # adopted from Label Studio, never archived here: nothing to compare with
        try:
            stat = file_stat(segment.path)  # before reading: a write after it shows as a change next time
        except OSError:
            continue  # gone since the scan: the scan's next run says so
        if (record.source_size, record.source_mtime_ns) == stat:
            continue
        try:
            data = segment.path.read_bytes()
        except OSError as exc:
            out.problems.append(Problem(str(segment.path), f"unreadable file ({exc.strerror or exc.__class__.__name__})"))
            continue
        if sha256_bytes(data) == record.sha256:
            out.touched[segment.key] = stat
            continue
        try:
            clip = archive.add_bytes(data) if store else None
            if not store:
                archive.check(data)
        except AudioError as exc:
            out.problems.append(
                Problem(str(segment.path), f"changed on disk, but the new audio is unusable ({exc}); its task keeps the old audio")
            )
            continue
        out.changed.append(AudioChange(segment, record.sha256, clip, stat))
    return out
