"""The dataset manifest: what ``sync pull`` writes and training reads.

``<home>/datasets/manifest.jsonl`` and ``manifest.csv`` hold the same rows, one per usable annotated
segment: ``audio_path`` (absolute, into the archive), ``transcript``, ``duration`` (s), ``speaker``,
``session``, ``notes``, then ``segment_key``, ``sha256``, ``task_id``, ``annotated_at``. Readers must
tolerate extra columns. Rows are sorted by segment key and rendered deterministically, so the same
annotations always give the same bytes; files are only replaced when their bytes would change.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path

MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
REQUIRED_COLUMNS = ("audio_path", "transcript", "duration", "speaker", "session", "notes")


@dataclass(frozen=True)
class ManifestRow:
    audio_path: str
    transcript: str
    duration: float
    speaker: str = ""
    session: str = ""
    notes: str = ""
    segment_key: str = ""
    sha256: str = ""
    task_id: int | None = None
    annotated_at: str = ""


COLUMNS = tuple(f.name for f in fields(ManifestRow))


def _values(row: ManifestRow) -> dict[str, object]:
    # Not dataclasses.asdict: its recursive deep copy is most of the cost of rendering 10,000 rows.
    return {name: getattr(row, name) for name in COLUMNS}


def render_jsonl(rows: Iterable[ManifestRow]) -> bytes:
    return "".join(json.dumps(_values(r), ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def render_csv(rows: Iterable[ManifestRow]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(["" if v is None else v for v in _values(row).values()] for row in rows)
    return buffer.getvalue().encode("utf-8")


def write_if_changed(path: Path, content: bytes) -> bool:
    """Atomically replaces ``path`` with ``content`` unless it already holds exactly that; True if written."""
    try:
        if path.read_bytes() == content:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return True


def write_manifest(directory: str | Path, rows: Iterable[ManifestRow]) -> bool:
    """Writes both files (rows sorted by segment key); True if either changed."""
    ordered = sorted(rows, key=lambda r: (r.segment_key, r.audio_path))
    directory = Path(directory)
    changed_jsonl = write_if_changed(directory / MANIFEST_JSONL, render_jsonl(ordered))
    changed_csv = write_if_changed(directory / MANIFEST_CSV, render_csv(ordered))
    return changed_jsonl or changed_csv


def _row(values: dict[str, object], where: str) -> ManifestRow:
    missing = [c for c in REQUIRED_COLUMNS if c not in values]
    if missing:
        raise ValueError(f"{where}: missing column(s) {', '.join(missing)}")
    known = {k: values[k] for k in COLUMNS if k in values}
    known["duration"] = float(known["duration"] or 0.0)
    task_id = known.get("task_id")
    known["task_id"] = int(task_id) if task_id not in (None, "") else None
    for key in ("transcript", "speaker", "session", "notes", "segment_key", "sha256", "annotated_at", "audio_path"):
        if key in known:
            known[key] = "" if known[key] is None else str(known[key])
    return ManifestRow(**known)


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Rows of a manifest (``.jsonl`` or ``.csv``; a directory means its ``manifest.jsonl``)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_JSONL
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":
        return [_row(dict(r), f"{path}:{i + 2}") for i, r in enumerate(csv.DictReader(io.StringIO(text)))]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            rows.append(_row(json.loads(line), f"{path}:{number}"))
    return rows
