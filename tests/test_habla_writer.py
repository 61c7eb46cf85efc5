"""corrected_ground_truth.json written back exactly as Habla's corrections page saves it, atomically.

The checks mirror what Habla's code does with the file: its page (server/routes/api_corrections.py)
loads it, validates every segment against a pydantic model on save and drops unknown fields; its dataset
script (scripts/prepare_dataset.py) calls ``.strip()`` on every transcript and compares every confidence.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from habla_ls.sample_recordings import write_sample_recordings
from sync.habla import SOURCE_CORRECTED, SOURCE_GROUND_TRUTH, scan_recordings
from sync.habla_writer import Correction, HablaWriteError, write_corrections

HABLA_KEYS = ["generated_at", "whisper_model", "direction", "total_segments", "segments", "corrected_at", "correction_stats"]
SEGMENT_KEYS = ["segment_id", "filename", "transcript", "confidence", "asr_time_seconds", "translation", "asr_corrections", "reviewed", "human_corrected"]


class PageSegment(BaseModel):
    """The segment shape Habla's corrections page accepts on save (strict: no null, no coercion)."""

    model_config = ConfigDict(strict=True)
    segment_id: int
    filename: str
    transcript: str
    confidence: float
    asr_time_seconds: float
    translation: str
    asr_corrections: str
    reviewed: bool
    human_corrected: bool


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _habla_saves(session: Path) -> None:
    """What Habla's page does when the teacher saves: every segment re-validated, unknown fields dropped."""
    document = json.loads((session / "corrected_ground_truth.json").read_text())
    truth = json.loads((session / "ground_truth.json").read_text())
    segments = [PageSegment(**s).model_dump() for s in document["segments"]]
    saved = {k: truth.get(k, "") for k in HABLA_KEYS[:3]} | {"total_segments": len(segments), "segments": segments}
    (session / "corrected_ground_truth.json").write_text(json.dumps(saved, indent=2, ensure_ascii=False))


@pytest.fixture
def session(tmp_path: Path) -> Path:
    rec = write_sample_recordings(tmp_path / "rec", sessions=1, segments_per_session=4, live_session=False, synthesize=lambda t, s: np.zeros(800, np.float32))
    return rec.root / rec.sessions[0]


def test_written_in_habla_format_from_ground_truth_and_read_back(session: Path) -> None:
    others = _digests(session)
    truth = json.loads((session / "ground_truth.json").read_text())
    corrections = [Correction("segment_002.wav", "Abrid el libro por la página 32.", "2025-03-04T10:00:00Z"),
                   Correction("segment_004.wav", "Hoy vamos a hablar de los verbos irregulares.", "2025-03-04T10:01:00Z")]
    assert write_corrections(session, corrections)
    raw = (session / "corrected_ground_truth.json").read_text(encoding="utf-8")
    document = json.loads(raw)
    assert list(document) == HABLA_KEYS and not raw.endswith("\n") and "página" in raw  # json.dump(indent=2, ensure_ascii=False)
    assert [document[k] for k in HABLA_KEYS[:3]] == [truth[k] for k in HABLA_KEYS[:3]]
    assert datetime.fromisoformat(document["corrected_at"]).utcoffset().total_seconds() == 0
    entries = {e["filename"]: e for e in document["segments"]}
    assert document["total_segments"] == len(entries) == 4  # every ground-truth segment, like Habla's page
    for entry in document["segments"]:
        assert list(entry) == SEGMENT_KEYS and PageSegment(**entry)
    assert entries["segment_002.wav"]["reviewed"] and entries["segment_002.wav"]["human_corrected"]
    assert entries["segment_004.wav"]["reviewed"] and not entries["segment_004.wav"]["human_corrected"]
    assert not entries["segment_001.wav"]["reviewed"]
    assert entries["segment_001.wav"]["asr_time_seconds"] == truth["segments"][0]["asr_time_seconds"]
    assert document["correction_stats"] == {"reviewed": 2, "human_corrected": 1, "total": 4}
    assert _digests(session) | {"corrected_ground_truth.json": ""} == others | {"corrected_ground_truth.json": ""}
    scan = scan_recordings(session.parent)
    sources = {s.filename: (s.transcript_source, s.transcript) for s in scan.segments}
    assert sources["segment_002.wav"] == (SOURCE_CORRECTED, "Abrid el libro por la página 32.")
    assert sources["segment_001.wav"][0] == SOURCE_GROUND_TRUTH
    # the same corrections again: the file is not even replaced
    inode = (session / "corrected_ground_truth.json").stat().st_ino
    assert not write_corrections(session, corrections)
    assert (session / "corrected_ground_truth.json").stat().st_ino == inode
    # the teacher saves in Habla: our corrections survive its round trip
    _habla_saves(session)
    scan = scan_recordings(session.parent)
    assert {s.filename: s.transcript for s in scan.segments if s.transcript_source == SOURCE_CORRECTED} == {
        "segment_002.wav": "Abrid el libro por la página 32.",
        "segment_004.wav": "Hoy vamos a hablar de los verbos irregulares.",
    }


def test_habla_corrections_and_unknown_fields_are_kept(session: Path) -> None:
    # A file Habla's page wrote, with one segment corrected there, plus fields some other tool added.
    document = json.loads((session / "ground_truth.json").read_text())
    document["segments"][0] |= {"transcript": "corregido en Habla", "reviewed": True, "human_corrected": True, "extra": 5}
    for entry in document["segments"][1:]:
        entry |= {"reviewed": False, "human_corrected": False}
    document |= {"corrected_at": "2025-03-03T11:00:00+00:00", "reviewer": "teacher"}
    (session / "corrected_ground_truth.json").write_text(json.dumps(document))
    assert write_corrections(session, [Correction("segment_003.wav", "¿Quién terminó?", "t")])
    written = json.loads((session / "corrected_ground_truth.json").read_text())
    assert written["reviewer"] == "teacher" and written["corrected_at"] != "2025-03-03T11:00:00+00:00"
    first, _, third, _ = written["segments"]
    assert (first["transcript"], first["reviewed"], first["human_corrected"], first["extra"]) == ("corregido en Habla", True, True, 5)
    assert (third["transcript"], third["reviewed"], third["human_corrected"]) == ("¿Quién terminó?", True, True)
    assert written["correction_stats"] == {"reviewed": 2, "human_corrected": 2, "total": 4}


def test_session_without_ground_truth_gets_only_typed_corrected_segments(session: Path) -> None:
    (session / "ground_truth.json").unlink()
    assert write_corrections(session, [Correction("segment_003.wav", "Hola.", "t")])
    document = json.loads((session / "corrected_ground_truth.json").read_text())
    assert [document[k] for k in HABLA_KEYS[:4]] == ["", "", "", 1]
    (entry,) = document["segments"]
    assert PageSegment(**entry) and (entry["segment_id"], entry["confidence"], entry["reviewed"]) == (3, 0.0, True)


def test_corrupt_corrected_file_and_deleted_session_are_left_alone(session: Path) -> None:
    (session / "corrected_ground_truth.json").write_text("{not json")
    with pytest.raises(HablaWriteError, match="not overwritten"):
        write_corrections(session, [Correction("segment_001.wav", "x", "t")])
    assert (session / "corrected_ground_truth.json").read_text() == "{not json"
    with pytest.raises(HablaWriteError, match="no longer exists"):
        write_corrections(session.parent / "gone_20250101_000000", [Correction("segment_001.wav", "x", "t")])
