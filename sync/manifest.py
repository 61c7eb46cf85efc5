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


def row_lines(row: ManifestRow) -> tuple[str, str]:
    """The row's line in ``manifest.jsonl`` and its line in ``manifest.csv``, each with its newline."""
    values = _values(row)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["" if v is None else v for v in values.values()])
    return json.dumps(values, ensure_ascii=False) + "\n", buffer.getvalue()


def _csv_header() -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(COLUMNS)
    return buffer.getvalue()


CSV_HEADER = _csv_header()


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


def render_manifest(rows: Iterable[ManifestRow]) -> dict[str, bytes]:
    """The bytes of both files (file name -> content), rows sorted by segment key."""
    return join_lines((row, row_lines(row)) for row in rows)


def join_lines(lines: Iterable[tuple[ManifestRow, tuple[str, str]]]) -> dict[str, bytes]:
    """:func:`render_manifest` from rows whose :func:`row_lines` are known already (a caller that renders
    the same rows again keeps their lines)."""
    ordered = sorted(lines, key=lambda item: (item[0].segment_key, item[0].audio_path))
    return {
        MANIFEST_JSONL: "".join(jsonl for _, (jsonl, _) in ordered).encode("utf-8"),
        MANIFEST_CSV: (CSV_HEADER + "".join(line for _, (_, line) in ordered)).encode("utf-8"),
    }


def write_manifest(
    directory: str | Path, rows: Iterable[ManifestRow] = (), *, rendered: dict[str, bytes] | None = None
) -> bool:
    """Writes both files (rows sorted by segment key); True if either changed. ``rendered``: what
    :func:`render_manifest` made of the rows, when the caller has it already (``rows`` are then unused)."""
    files = render_manifest(rows) if rendered is None else rendered
    directory = Path(directory)
    changed = [write_if_changed(directory / name, files[name]) for name in (MANIFEST_JSONL, MANIFEST_CSV)]
    return any(changed)


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
