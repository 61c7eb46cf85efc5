"""The dataset manifest: JSONL and CSV agree, extra columns are tolerated, unchanged rows are not rewritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sync.manifest import ManifestRow, read_manifest, write_manifest

ROWS = [
    ManifestRow("/a/2.wav", "¿Qué tal, niños?", 2.5, "alumno", "s", "", "s/segment_002.wav", "b" * 64, 12, "2025-01-01T00:00:00Z"),
    ManifestRow("/a/1.wav", 'dijo "hola", y se fue', 1.25, "profesora", "s", "prefill: habla-live", "s/segment_001.wav", "a" * 64, 11, ""),
]


def test_jsonl_and_csv_round_trip_sorted_by_key(tmp_path: Path) -> None:
    assert write_manifest(tmp_path, ROWS)
    expected = sorted(ROWS, key=lambda r: r.segment_key)
    assert read_manifest(tmp_path / "manifest.jsonl") == expected
    assert read_manifest(tmp_path / "manifest.csv") == expected
    assert read_manifest(tmp_path) == expected
    first = json.loads((tmp_path / "manifest.jsonl").read_text().splitlines()[0])
    assert list(first)[:6] == ["audio_path", "transcript", "duration", "speaker", "session", "notes"]


def test_unchanged_rows_leave_files_untouched(tmp_path: Path) -> None:
    write_manifest(tmp_path, ROWS)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    inode = (tmp_path / "manifest.jsonl").stat().st_ino
    assert not write_manifest(tmp_path, list(reversed(ROWS)))
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before
    assert (tmp_path / "manifest.jsonl").stat().st_ino == inode
    assert write_manifest(tmp_path, ROWS[:1])
    assert len(read_manifest(tmp_path)) == 1


def test_reader_tolerates_extra_columns_and_names_missing_ones(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    row = {"audio_path": "/x.wav", "transcript": "hola", "duration": 1, "speaker": "", "session": "s", "notes": "", "future": 1}
    path.write_text(json.dumps(row) + "\n")
    assert read_manifest(path)[0].transcript == "hola"
    path.write_text(json.dumps({"audio_path": "/x.wav"}) + "\n")
    with pytest.raises(ValueError, match=r"m.jsonl:1: missing column\(s\) transcript"):
        read_manifest(path)
