"""Writing corrections back into a Habla session dir as ``corrected_ground_truth.json``.

Habla's own format: ``{"segments": [{segment_id, filename, transcript, confidence, reviewed,
human_corrected, corrected_at, ...}], ...}``, a copy of ``ground_truth.json`` with review flags. We
start from the existing corrected file (keeping every field and entry we do not change), else from the
ground truth, and set ``transcript``, ``reviewed``, ``human_corrected`` and ``corrected_at`` for the
corrected segments. The file is replaced atomically and only when its content changes; no other file
in the session dir is ever touched. A corrupt existing corrected file is left alone (reported).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sync.habla import CORRECTED_FILE, GROUND_TRUTH_FILE, segment_number
from sync.manifest import write_if_changed

WRITER = "habla-ls"


class HablaWriteError(ValueError):
    """The session's corrected file cannot be updated; ``str()`` names the file and the reason."""


@dataclass(frozen=True)
class Correction:
    filename: str
    transcript: str
    corrected_at: str  # the annotation's time: deterministic, so a repeated pull writes identical bytes


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


def _base_document(session_dir: Path) -> dict[str, Any]:
    corrected = _load(session_dir / CORRECTED_FILE)
    if corrected is not None:
        return corrected
    try:
        truth = _load(session_dir / GROUND_TRUTH_FILE)
    except HablaWriteError:
        truth = None  # a corrupt ground truth is Habla's problem; start empty rather than copy garbage
    if truth is None:
        return {"session": session_dir.name, "segments": []}
    document = copy.deepcopy(truth)
    for entry in document.get("segments", []):
        if isinstance(entry, dict):
            entry.setdefault("reviewed", False)
            entry.setdefault("human_corrected", False)
    return document


def render_corrections(session_dir: Path, corrections: Iterable[Correction]) -> bytes:
    document = _base_document(session_dir)
    entries: list[dict[str, Any]] = [e for e in document.get("segments", []) if isinstance(e, dict)]
    by_name = {e.get("filename"): e for e in entries}
    for correction in corrections:
        entry = by_name.get(correction.filename)
        if entry is None:
            entry = {
                "segment_id": segment_number(correction.filename),
                "filename": correction.filename,
                "transcript": None,
                "confidence": None,
            }
            entries.append(entry)
            by_name[correction.filename] = entry
        # The machine transcript before any human touched it, so Habla can show what changed.
        original = entry.get("original_transcript", entry.get("transcript"))
        entry["original_transcript"] = original
        entry["transcript"] = correction.transcript
        entry["reviewed"] = True
        entry["human_corrected"] = (original or "").strip() != correction.transcript.strip()
        entry["corrected_at"] = correction.corrected_at
        entry["corrected_by"] = WRITER
    entries.sort(key=lambda e: (segment_number(str(e.get("filename", ""))) or 0, str(e.get("filename", ""))))
    document["segments"] = entries
    document.setdefault("session", session_dir.name)
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def write_corrections(session_dir: str | Path, corrections: Iterable[Correction]) -> bool:
    """Updates ``<session_dir>/corrected_ground_truth.json``; True if the file changed."""
    session_dir = Path(session_dir)
    if not session_dir.is_dir():
        raise HablaWriteError(f"{session_dir}: session dir no longer exists (deleted by Habla?); not written")
    return write_if_changed(session_dir / CORRECTED_FILE, render_corrections(session_dir, corrections))
