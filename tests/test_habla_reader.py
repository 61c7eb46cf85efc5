"""Reading Habla recordings dirs: transcript sources, live sessions, and every bad case as a Problem."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from habla_ls.sample_recordings import write_sample_recordings
from sync.habla import (
    SOURCE_CORRECTED,
    SOURCE_GROUND_TRUTH,
    SOURCE_LIVE,
    SkippedDir,
    prefill_score,
    scan_recordings,
    skipped_dirs_line,
)


def _silent_synth(text: str, speaker: str) -> np.ndarray:
    return np.full(1600, 0.01, dtype=np.float32)


@pytest.fixture
def recordings(tmp_path: Path):
    return write_sample_recordings(tmp_path / "rec", sessions=3, corrected=True, synthesize=_silent_synth)


def test_sources_speakers_and_live_session(recordings) -> None:
    scan = scan_recordings(recordings.root)
    assert scan.problems == []
    assert [s.name for s in scan.sessions] == recordings.sessions
    by_key = {s.key: s for s in scan.segments}
    assert len(by_key) == 12
    first, second, live = recordings.sessions
    # corrected_ground_truth: the first half is reviewed and wins; the rest falls back to ground truth
    assert by_key[f"{first}/segment_001.wav"].transcript_source == SOURCE_CORRECTED
    assert by_key[f"{first}/segment_001.wav"].transcript == recordings.references[f"{first}/segment_001.wav"]
    assert by_key[f"{first}/segment_004.wav"].transcript_source == SOURCE_GROUND_TRUTH
    assert by_key[f"{first}/segment_002.wav"].speaker == "alumno"
    live_session = scan.sessions[-1]
    assert live_session.live and live_session.name == live
    assert all(s.transcript is None for s in live_session.segments)
    assert len(live_session.segments) == 4


def test_live_transcript_used_without_ground_truth(recordings) -> None:
    session = recordings.root / recordings.sessions[0]
    (session / "ground_truth.json").unlink()
    (session / "corrected_ground_truth.json").unlink()
    scan = scan_recordings(recordings.root, sessions=[recordings.sessions[0]])
    assert {s.transcript_source for s in scan.segments} == {SOURCE_LIVE}
    metadata = json.loads((session / "metadata.json").read_text())
    # Habla's recorder keeps the live transcript in raw_transcript and the translator's confidence
    assert [s.transcript for s in scan.segments] == [e["raw_transcript"] for e in metadata["segments"]]
    assert [s.habla_confidence for s in scan.segments] == [e["confidence"] for e in metadata["segments"]]
    assert all(0 < prefill_score(s.habla_confidence) <= 1 for s in scan.segments)


def test_habla_placeholders_unreviewed_copies_and_extra_files(recordings) -> None:
    session = recordings.root / recordings.sessions[1]
    truth = json.loads((session / "ground_truth.json").read_text())
    truth["segments"][2]["transcript"] = "[inaudible]"  # what generate_ground_truth.py writes for no text
    (session / "ground_truth.json").write_text(json.dumps(truth))
    metadata = json.loads((session / "metadata.json").read_text())
    metadata["segments"][3]["speaker"] = None  # Habla stores a null speaker label when diarization has none
    (session / "metadata.json").write_text(json.dumps(metadata))
    (session / "raw_stream.webm").write_bytes(b"\x1aE\xdf\xa3")  # the recorder's raw stream, and a marker file
    (session / ".tested").touch()
    by_name = {s.filename: s for s in scan_recordings(recordings.root, sessions=[session.name]).segments}
    assert sorted(by_name) == [f"segment_00{i}.wav" for i in range(1, 5)]
    # the placeholder is no transcript: the live one is used instead
    assert (by_name["segment_003.wav"].transcript_source, by_name["segment_003.wav"].transcript) == (
        SOURCE_LIVE,
        metadata["segments"][2]["raw_transcript"],
    )
    assert by_name["segment_004.wav"].speaker == ""
    # without ground_truth.json, the corrected file's unreviewed entries (Habla's copies of it) stand in
    (session / "ground_truth.json").unlink()
    by_name = {s.filename: s for s in scan_recordings(recordings.root, sessions=[session.name]).segments}
    assert [by_name[f"segment_00{i}.wav"].transcript_source for i in range(1, 5)] == [
        SOURCE_CORRECTED, SOURCE_CORRECTED, SOURCE_GROUND_TRUTH, SOURCE_GROUND_TRUTH,
    ]


def test_older_variants_are_still_read(tmp_path: Path) -> None:
    rec = write_sample_recordings(tmp_path / "rec", sessions=1, segments_per_session=2, live_session=False, ground_truth=False, synthesize=_silent_synth)
    session = rec.root / rec.sessions[0]
    (session / "metadata.json").write_text(json.dumps({"speaker": "profesora", "segments": [
        {"file": "segment_001.wav", "transcript": "hola", "confidence": -0.5},
        {"segment_id": 2, "text": "adiós"},
    ]}))
    segments = scan_recordings(rec.root).segments
    assert [(s.transcript, s.transcript_source, s.speaker) for s in segments] == [
        ("hola", SOURCE_LIVE, "profesora"), ("adiós", SOURCE_LIVE, "profesora"),
    ]


def test_corrupt_json_is_one_problem_and_wavs_still_read(recordings) -> None:
    session = recordings.root / recordings.sessions[0]
    (session / "metadata.json").write_text('{"segments": [ {"filename": ')
    (session / "ground_truth.json").write_text("[1, 2]")
    scan = scan_recordings(recordings.root, sessions=[recordings.sessions[0]])
    reasons = {Path(p.path).name: p.reason for p in scan.problems}
    assert "corrupt JSON" in reasons["metadata.json"]
    assert "corrupt JSON" in reasons["ground_truth.json"]
    assert len(scan.segments) == 4  # the WAVs are the truth about which segments exist
    assert not scan.sessions[0].live  # metadata.json exists: the session ended, even if the file is broken


def test_names_escaping_the_dir_and_missing_wavs(recordings, tmp_path: Path) -> None:
    session = recordings.root / recordings.sessions[1]
    truth = json.loads((session / "ground_truth.json").read_text())
    truth["segments"].append({"segment_id": 9, "filename": "../../etc/passwd", "transcript": "x"})
    truth["segments"].append({"segment_id": 10, "filename": "segment_010.wav", "transcript": "gone"})
    (session / "ground_truth.json").write_text(json.dumps(truth))
    outside = tmp_path / "outside.wav"
    outside.write_bytes((session / "segment_001.wav").read_bytes())
    os.symlink(outside, session / "segment_099.wav")
    scan = scan_recordings(recordings.root, sessions=[recordings.sessions[1]])
    lines = [str(p) for p in scan.problems]
    assert any("'../../etc/passwd' escapes the session dir" in line for line in lines)
    assert any(line.startswith(str(session / "segment_010.wav")) and "WAV is missing" in line for line in lines)
    assert any(line.startswith(str(session / "segment_099.wav")) and "outside the recordings dir" in line for line in lines)
    assert sorted(s.filename for s in scan.segments) == [f"segment_00{i}.wav" for i in range(1, 5)]


def test_unknown_session_and_missing_root(tmp_path: Path, recordings) -> None:
    assert "not found" in scan_recordings(tmp_path / "nope").problems[0].reason
    scan = scan_recordings(recordings.root, sessions=["clase_20990101_000000"])
    assert scan.segments == [] and scan.problems[0].reason == "no such session"


@pytest.mark.parametrize(
    ("confidence", "corrected", "expected"),
    [
        (0.8, False, 0.8),
        (-0.25, False, math.exp(-0.25)),
        (87, False, 0.87),
        (0, False, None),
        (None, False, None),
        ("high", False, None),
        (float("nan"), False, None),
        (0, True, 1.0),
        (1000, False, None),
    ],
)
def test_prefill_score_rule(confidence, corrected, expected) -> None:
    score = prefill_score(confidence, human_corrected=corrected)
    assert score == pytest.approx(expected) if expected is not None else score is None


def test_dirs_that_are_not_sessions_are_skipped_with_a_reason(recordings) -> None:
    root = recordings.root
    wav = (root / recordings.sessions[0] / "segment_001.wav").read_bytes()
    (root / "processed").mkdir()
    for n in range(12):
        (root / "processed" / f"asr_input_1741000000_{n:04d}.wav").write_bytes(wav)
    (root / "clase_20251399_250000").mkdir()  # the right shape, but no real date: not a session
    (root / "clase_20251399_250000" / "segment_001.wav").write_bytes(wav)
    (root / "notas").mkdir()
    scan = scan_recordings(root)
    assert [s.name for s in scan.sessions] == recordings.sessions and len(scan.segments) == 12
    assert scan.problems == []
    assert [(d.path.name, d.wavs, d.reason) for d in scan.skipped_dirs] == [
        ("clase_20251399_250000", 1, "not named <session>_<YYYYmmdd>_<HHMMSS>"),
        ("notas", 0, "not named <session>_<YYYYmmdd>_<HHMMSS>"),
        ("processed", 12, "Habla's debug copies of its ASR input"),
    ]
    assert skipped_dirs_line(scan.skipped_dirs[2:]) == (
        "skipped 1 dir that is not a Habla session: processed/ (12 WAVs: Habla's debug copies of its ASR input)"
    )
    many = [SkippedDir(root / f"d{n}", 1, "x") for n in range(7)]
    assert skipped_dirs_line(many).endswith("d4/ (1 WAV: x) and 2 more") and skipped_dirs_line([]) is None
    # Asked for by name, it is still not read, and not "no such session" either.
    named = scan_recordings(root, sessions=["processed"])
    assert (named.segments, named.problems, [d.path.name for d in named.skipped_dirs]) == ([], [], ["processed"])
