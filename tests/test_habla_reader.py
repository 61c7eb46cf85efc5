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
    prefill_score,
    scan_recordings,
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
    assert all(s.habla_confidence is not None and s.habla_confidence < 0 for s in scan.segments)


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
