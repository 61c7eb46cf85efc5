"""corrected_ground_truth.json written back in Habla's format, atomically, and read back by our reader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from habla_ls.sample_recordings import write_sample_recordings
from sync.habla import SOURCE_CORRECTED, SOURCE_GROUND_TRUTH, scan_recordings
from sync.habla_writer import Correction, HablaWriteError, write_corrections


def _digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture
def session(tmp_path: Path) -> Path:
    rec = write_sample_recordings(tmp_path / "rec", sessions=1, segments_per_session=4, live_session=False, synthesize=lambda t, s: np.zeros(800, np.float32))
    return rec.root / rec.sessions[0]


def test_written_from_ground_truth_and_read_back(session: Path) -> None:
    others = _digests(session)
    corrections = [Correction("segment_002.wav", "Abrid el libro por la página 32.", "2025-03-04T10:00:00Z"),
                   Correction("segment_004.wav", "Hoy vamos a hablar de los verbos irregulares.", "2025-03-04T10:01:00Z")]
    assert write_corrections(session, corrections)
    document = json.loads((session / "corrected_ground_truth.json").read_text())
    entries = {e["filename"]: e for e in document["segments"]}
    assert len(entries) == 4  # every ground-truth segment is there, like Habla's own file
    assert entries["segment_002.wav"]["reviewed"] and entries["segment_002.wav"]["human_corrected"]
    assert entries["segment_002.wav"]["original_transcript"] == "Abrid el libro por la página treinta y dos."
    assert entries["segment_004.wav"]["reviewed"] and not entries["segment_004.wav"]["human_corrected"]
    assert not entries["segment_001.wav"]["reviewed"]
    assert _digests(session) | {"corrected_ground_truth.json": ""} == others | {"corrected_ground_truth.json": ""}
    scan = scan_recordings(session.parent)
    sources = {s.filename: (s.transcript_source, s.transcript) for s in scan.segments}
    assert sources["segment_002.wav"] == (SOURCE_CORRECTED, "Abrid el libro por la página 32.")
    assert sources["segment_001.wav"][0] == SOURCE_GROUND_TRUTH
    # the same corrections again: identical bytes, file not replaced
    inode = (session / "corrected_ground_truth.json").stat().st_ino
    assert not write_corrections(session, corrections)
    assert (session / "corrected_ground_truth.json").stat().st_ino == inode


def test_existing_corrections_and_unknown_fields_are_kept(session: Path) -> None:
    (session / "corrected_ground_truth.json").write_text(json.dumps({
        "session_id": session.name, "reviewer": "teacher",
        "segments": [{"segment_id": 1, "filename": "segment_001.wav", "transcript": "corregido en Habla",
                      "reviewed": True, "human_corrected": True, "extra": 5}],
    }))
    write_corrections(session, [Correction("segment_003.wav", "¿Quién terminó?", "t")])
    document = json.loads((session / "corrected_ground_truth.json").read_text())
    assert document["reviewer"] == "teacher"
    assert [e["filename"] for e in document["segments"]] == ["segment_001.wav", "segment_003.wav"]
    assert document["segments"][0]["transcript"] == "corregido en Habla" and document["segments"][0]["extra"] == 5


def test_corrupt_corrected_file_and_deleted_session_are_left_alone(session: Path) -> None:
    (session / "corrected_ground_truth.json").write_text("{not json")
    with pytest.raises(HablaWriteError, match="not overwritten"):
        write_corrections(session, [Correction("segment_001.wav", "x", "t")])
    assert (session / "corrected_ground_truth.json").read_text() == "{not json"
    with pytest.raises(HablaWriteError, match="no longer exists"):
        write_corrections(session.parent / "gone_20250101_000000", [Correction("segment_001.wav", "x", "t")])
