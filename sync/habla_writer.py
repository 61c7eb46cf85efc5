"""Writing corrections back into a Habla session dir as ``corrected_ground_truth.json``.

The file is written exactly as Habla's own corrections page saves it (``PUT
/api/recordings/{id}/ground-truth`` in habla/server/routes/api_corrections.py)::

    {"generated_at", "whisper_model", "direction"   copied from ground_truth.json,
     "total_segments": n,
     "segments": [{"segment_id": int, "filename": str, "transcript": str, "confidence": float,
                   "asr_time_seconds": float, "translation": str, "asr_corrections": str,
                   "reviewed": bool, "human_corrected": bool}, ...],
     "corrected_at": UTC ISO time of the save,
     "correction_stats": {"reviewed": r, "human_corrected": c, "total": n}}

``json.dump(indent=2, ensure_ascii=False)``, no trailing newline. Every field has the type the page's
pydantic model requires (a null transcript or confidence would make Habla refuse the teacher's next
save), and Habla's dataset script (scripts/prepare_dataset.py) trains on *every* segment of this file,
so the segments come from the existing corrected file, else from the ground truth (all of it, like
the page), and only a session without either gets just the corrected segments.

The corrected segments get the annotation's text, ``reviewed`` true, and ``human_corrected`` true when
the text differs from the machine transcript in ground_truth.json (like the page, which compares with
the text it showed). Fields and entries we do not change are kept, including unknown ones another tool
added. The file is replaced atomically and only when its content (apart from ``corrected_at``) would
change; no other file in the session dir is ever touched. A corrupt existing corrected file is left
alone (reported).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sync.habla import CORRECTED_FILE, GROUND_TRUTH_FILE, segment_number
from sync.manifest import write_if_changed

HEADER_FIELDS = ("generated_at", "whisper_model", "direction")  # copied from ground_truth.json
# The page's CorrectionSegment model: field, type, default when missing or of the wrong type.
SEGMENT_FIELDS: tuple[tuple[str, type, Any], ...] = (
    ("segment_id", int, 0),
    ("filename", str, ""),
    ("transcript", str, ""),
    ("confidence", float, 0.0),
    ("asr_time_seconds", float, 0.0),
    ("translation", str, ""),
    ("asr_corrections", str, ""),
    ("reviewed", bool, False),
    ("human_corrected", bool, False),
)


class HablaWriteError(ValueError):
    """The session's corrected file cannot be updated; ``str()`` names the file and the reason."""


@dataclass(frozen=True)
class Correction:
    filename: str
    transcript: str
    corrected_at: str = ""  # the annotation's time (kept for callers; Habla records only the save time)


def _load(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HablaWriteError(f"{path}: cannot be read ({exc.__class__.__name__}); not overwritten") from None
    if not isinstance(data, dict) or not isinstance(data.get("segments", []), list):
        raise HablaWriteError(f"{path}: not in Habla's format; not overwritten")
    return data


def _coerce(value: Any, kind: type, default: Any) -> Any:
    if kind is bool:
        return value if isinstance(value, bool) else default
    if kind is str:
        return value if isinstance(value, str) else default
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if kind is int:
        return int(value)
    return float(value) if math.isfinite(value) else default


def _habla_segment(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry with the page's fields first, typed as the page requires, then any other fields."""
    out = {name: _coerce(entry.get(name), kind, default) for name, kind, default in SEGMENT_FIELDS}
    if not out["segment_id"]:
        out["segment_id"] = segment_number(out["filename"]) or 0
    out.update({k: v for k, v in entry.items() if k not in out})
    return out


def render_corrections(session_dir: Path, corrections: Iterable[Correction], *, now: datetime | None = None) -> bytes | None:
    """The new file's bytes, or None when the corrections are already there."""
    existing = _load(session_dir / CORRECTED_FILE)
    try:
        truth = _load(session_dir / GROUND_TRUTH_FILE) or {}
    except HablaWriteError:
        truth = {}  # a corrupt ground truth is Habla's problem; we only lose its header and machine text
    truth_text = {
        e.get("filename"): e.get("transcript") for e in truth.get("segments", []) if isinstance(e, dict)
    }
    base = existing if existing is not None else truth
    entries = [_habla_segment(e) for e in base.get("segments", []) if isinstance(e, dict)]
    if existing is None:
        for entry in entries:  # a fresh copy of the ground truth: nothing reviewed yet
            entry["reviewed"] = entry["human_corrected"] = False
    by_name = {e["filename"]: e for e in entries}
    for correction in corrections:
        entry = by_name.get(correction.filename)
        if entry is None:
            entry = _habla_segment({"filename": correction.filename})
            entries.append(entry)
            by_name[correction.filename] = entry
        machine = truth_text.get(correction.filename)
        if isinstance(machine, str):
            entry["human_corrected"] = machine.strip() != correction.transcript.strip()
        else:  # no ground truth: compare with the text the file held, as Habla's page does (and keep a True)
            entry["human_corrected"] = entry["human_corrected"] or entry["transcript"].strip() != correction.transcript.strip()
        entry["transcript"] = correction.transcript
        entry["reviewed"] = True
    entries.sort(key=lambda e: (e["segment_id"], e["filename"]))

    header_source = truth or existing or {}  # Habla copies these from the ground truth; keep ours without one
    document: dict[str, Any] = {name: _coerce(header_source.get(name), str, "") for name in HEADER_FIELDS}
    document["total_segments"] = len(entries)
    document["segments"] = entries
    document["corrected_at"] = (existing or {}).get("corrected_at")
    document["correction_stats"] = {
        "reviewed": sum(1 for e in entries if e["reviewed"]),
        "human_corrected": sum(1 for e in entries if e["human_corrected"]),
        "total": len(entries),
    }
    # Fields another tool added at the top level are kept (after Habla's).
    document.update({k: v for k, v in (existing or {}).items() if k not in document})
    if existing is not None and {k: v for k, v in document.items() if k != "corrected_at"} == {
        k: v for k, v in existing.items() if k != "corrected_at"
    }:
        return None
    document["corrected_at"] = (now or datetime.now(UTC)).isoformat()
    return json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8")


def write_corrections(session_dir: str | Path, corrections: Iterable[Correction]) -> bool:
    """Updates ``<session_dir>/corrected_ground_truth.json``; True if the file changed."""
    session_dir = Path(session_dir)
    if not session_dir.is_dir():
        raise HablaWriteError(f"{session_dir}: session dir no longer exists (deleted by Habla?); not written")
    content = render_corrections(session_dir, corrections)
    return content is not None and write_if_changed(session_dir / CORRECTED_FILE, content)
