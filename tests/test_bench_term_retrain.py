"""bench/term/retrain.py's copy of a finished run: exactly the corrections a round trained on, nothing of later rounds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_scripts import bench_script


def _finished_run(run: Path) -> None:
    rows = [  # written in pull order, which is not the order the corrections were made in
        {"segment_key": f"s{i}/seg.wav", "transcript": f"frase {i}", "session": f"s{i}", "annotated_at": f"2026-12-05T20:0{i}:00Z"}
        for i in (3, 0, 2, 1)
    ]
    (run / "datasets").mkdir(parents=True)
    (run / "datasets" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "datasets" / "splits.json").write_text(json.dumps({"sessions": {"s0": "train", "s1": "test"}}))
    for name in ("regression", "replay"):
        (run / "datasets" / name).mkdir()
        (run / "datasets" / name / "manifest.jsonl").write_text(f"{name}\n")
    (run / "models" / "whisper-base-v1").mkdir(parents=True)
    (run / "models" / "whisper-base-v1" / "model_card.json").write_text("{}")
    (run / "models" / "habla-v2").mkdir()  # a later round's version: not copied
    (run / "models" / "CURRENT").write_text("habla-v2\n")


def test_copy_round_keeps_the_first_corrections_made_and_serves_whisper_base(tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "copy"
    _finished_run(run)
    with bench_script("term/retrain.py", "bench_term_retrain") as retrain:
        retrain.copy_round(run, 2, out)
        copied = [json.loads(line) for line in (out / "datasets" / "manifest.jsonl").read_text().splitlines()]
        assert [r["session"] for r in copied] == ["s0", "s1"]
        assert json.loads((out / "datasets" / "splits.json").read_text())["sessions"] == {"s0": "train", "s1": "test"}
        assert (out / "datasets" / "replay" / "manifest.jsonl").read_text() == "replay\n"
        assert sorted(p.name for p in (out / "models").iterdir()) == ["CURRENT", "whisper-base-v1"]
        assert (out / "models" / "CURRENT").read_text().strip() == "whisper-base-v1"
        with pytest.raises(SystemExit, match="4 corrections, fewer than --corrections 5"):
            retrain.copy_round(run, 5, tmp_path / "too-many")
