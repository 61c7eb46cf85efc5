"""Dataset building: grouped, seeded, persisted split; filters; cached features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml_backend.audio import decode, encode_wav
from ml_backend.features import log_mel_features
from training.manifest import (
    SPLITS_FILE,
    DatasetError,
    DatasetOptions,
    assign_splits,
    read_manifest,
    split_rows,
)


def _rows(sessions: range | list[str], per_session: int = 4) -> list[dict]:
    rows = []
    for s in sessions:
        name = s if isinstance(s, str) else f"clase_{s:02d}_20250101_0900{s:02d}"
        for i in range(per_session):
            rows.append(
                {
                    "audio_path": f"/archive/{name}/segment_{i:03d}.wav",
                    "transcript": f"frase {i}",
                    "session": name,
                    "segment_key": f"{name}/segment_{i:03d}.wav",
                    "speaker": "profe",
                }
            )
    return rows


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def test_split_is_grouped_by_session_and_fractions_roughly_kept(tmp_path: Path) -> None:
    rows = _rows(range(20))
    assignment = assign_splits(rows, tmp_path / SPLITS_FILE, test_fraction=0.15, validation_fraction=0.15, seed=1)
    assert set(assignment) == {r["session"] for r in rows}  # every session has exactly one split
    counts = {split: list(assignment.values()).count(split) for split in ("train", "validation", "test")}
    assert counts == {"train": 14, "validation": 3, "test": 3}


def test_split_is_seeded_and_reproducible(tmp_path: Path) -> None:
    rows = _rows(range(20))
    a = assign_splits(rows, tmp_path / "a.json", seed=7)
    b = assign_splits(rows, tmp_path / "b.json", seed=7)
    c = assign_splits(rows, tmp_path / "c.json", seed=8)
    assert a == b
    assert a != c


def test_test_sessions_stay_in_test_when_sessions_are_added(tmp_path: Path) -> None:
    splits = tmp_path / SPLITS_FILE
    first = assign_splits(_rows(range(10)), splits, seed=3)
    # next round: many new sessions, and the manifest lists them first
    second = assign_splits(_rows(range(10, 40)) + _rows(range(10)), splits, seed=3)
    for session, split in first.items():
        assert second[session] == split
    assert list(second.values()).count("test") > list(first.values()).count("test")
    saved = json.loads(splits.read_text())
    old_test = {s for s, split in first.items() if split == "test"}
    assert {k.split("/")[0] for k in saved["test_segments"]} >= old_test


def test_a_test_segment_pulls_its_session_into_test(tmp_path: Path) -> None:
    splits = tmp_path / SPLITS_FILE
    rows = _rows(range(10))
    first = assign_splits(rows, splits, seed=3)
    train_session = next(s for s, split in first.items() if split == "train")
    state = json.loads(splits.read_text())
    state["test_segments"].append(f"{train_session}/segment_000.wav")
    splits.write_text(json.dumps(state))
    assert assign_splits(rows, splits, seed=3)[train_session] == "test"


def test_small_manifests_still_train(tmp_path: Path) -> None:
    assert set(assign_splits(_rows(["only"]), tmp_path / "one.json").values()) == {"train"}
    two = assign_splits(_rows(["a", "b"]), tmp_path / "two.json")
    assert sorted(two.values()) == ["test", "train"]
    three = assign_splits(_rows(["a", "b", "c"]), tmp_path / "three.json")
    assert sorted(three.values()) == ["test", "train", "validation"]


def test_manifest_problems_are_one_line_each_and_the_rest_goes_on(tmp_path: Path) -> None:
    rows = _rows(["s1"], per_session=2)
    path = tmp_path / "manifest.jsonl"
    path.write_text(
        json.dumps(rows[0]) + "\n{not json\n" + json.dumps({"transcript": "sin audio"}) + "\n" + json.dumps(rows[1]) + "\n"
        + json.dumps(rows[1]) + "\n"
    )
    kept, problems = read_manifest(path)
    assert [r["segment_key"] for r in kept] == ["s1/segment_000.wav", "s1/segment_001.wav"]
    assert len(problems) == 3
    assert any(":2: not JSON" in p for p in problems)
    assert any(":3: missing audio_path" in p for p in problems)
    assert any("duplicate" in p for p in problems)
    with pytest.raises(DatasetError, match="manifest not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_csv_manifest_and_derived_keys(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text("audio_path,transcript,duration,speaker,session,notes\n/a/ses1_x/segment_001.wav,hola,1.0,,,\n")
    (row,), problems = read_manifest(path)
    assert problems == []
    assert row["segment_key"] == "ses1_x/segment_001.wav"
    assert row["session"] == "ses1_x"


def test_split_rows_persists_and_groups(tmp_path: Path) -> None:
    manifest = _write_manifest(tmp_path / "manifest.jsonl", _rows(range(8)))
    by_split, _ = split_rows(manifest, tmp_path, DatasetOptions(seed=5))
    sessions = {split: {r["session"] for r in rows} for split, rows in by_split.items()}
    assert not (sessions["train"] & sessions["test"] or sessions["train"] & sessions["validation"])
    assert (tmp_path / SPLITS_FILE).is_file()
    again, _ = split_rows(manifest, tmp_path, DatasetOptions(seed=99))  # persisted split wins over a new seed
    assert {r["segment_key"] for r in again["test"]} == {r["segment_key"] for r in by_split["test"]}


def _wav(path: Path, seconds: float, amplitude: float) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(16000 * seconds)) / 16000
    path.write_bytes(encode_wav((amplitude * np.sin(2 * np.pi * 200 * t)).astype(np.float32)))
    return str(path)


def test_build_dataset_filters_bad_segments_and_caches_features(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    from tests.training_data import make_home
    from training.base_model import load_processor
    from training.dataset import build_dataset

    home = tmp_path / "home"
    manifest = make_home(home, sessions=4, per_session=1)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    bad_dir = home / "archive" / rows[0]["session"]
    extra = [
        ("short.wav", _wav(bad_dir / "short.wav", 0.1, 0.3), "hola"),
        ("silent.wav", _wav(bad_dir / "silent.wav", 1.0, 0.0), "nada"),
        ("missing.wav", str(bad_dir / "missing.wav"), "perdido"),
        ("empty.wav", _wav(bad_dir / "empty.wav", 1.0, 0.3), "¿?"),
    ]
    for name, path, text in extra:
        rows.append({**rows[0], "audio_path": path, "transcript": text, "segment_key": f"{rows[0]['session']}/{name}"})
    _write_manifest(manifest, rows)
    processor = load_processor(tiny_whisper_dir, "es")

    built = build_dataset(manifest, home / "datasets", processor)
    assert sum(built.sizes.values()) == 4
    reasons = {line.split(":")[0].split("/")[-1]: line for line in built.rejected}
    assert set(reasons) == {"short.wav", "silent.wav", "missing.wav", "empty.wav"}
    assert "too short" in reasons["short.wav"] and "inaudible" in reasons["silent.wav"]
    assert "missing" in reasons["missing.wav"] and "empty transcript" in reasons["empty.wav"]
    assert all(str(bad_dir) in line for line in built.rejected)  # each line names the file

    train = built.dataset["train"].with_format("numpy")
    assert train[0]["input_features"].shape == (80, 3000)
    prompt = processor.tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|es|>", "<|transcribe|>", "<|notimestamps|>"])
    assert list(train[0]["labels"][:4]) == prompt
    assert processor.tokenizer.decode(train[0]["labels"], skip_special_tokens=True) == train[0]["transcript"]
    # WhisperFeatureExtractor's input (audio padded first), not the engine's zero-padded log-mel: training
    # on the served features measured worse (see training.features.FEATURE_FUNCTION).
    expected = processor.feature_extractor(decode(train[0]["audio_path"]), sampling_rate=16_000).input_features[0]
    np.testing.assert_allclose(train[0]["input_features"], expected, atol=1e-5)
    assert not np.allclose(train[0]["input_features"], log_mel_features([decode(train[0]["audio_path"])], 80)[0], atol=1e-3)

    stamps = {split: Path(f).stat().st_mtime_ns for split, f in built.cache_files.items()}
    again = build_dataset(manifest, home / "datasets", processor)
    assert {split: Path(f).stat().st_mtime_ns for split, f in again.cache_files.items()} == stamps
    assert again.sizes == built.sizes and len(again.rejected) == len(built.rejected)
    # Each cache file is recorded once, by the process that computed it (rank 0 outside a launcher).
    from training.features import CACHE_SUBDIR, cache_writes

    writes = cache_writes(home / "datasets" / CACHE_SUBDIR)
    assert sorted(w["file"] for w in writes) == sorted(Path(f).name for f in built.cache_files.values())
    assert {w["rank"] for w in writes} == {0} and {w["split"]: w["rows"] for w in writes}["train"] >= built.sizes["train"]


def test_packed_windows_are_laid_out_as_the_engine_packs_and_fit_its_window() -> None:
    from ml_backend.decoding import DecodeOptions
    from training.packing import plan_packed_windows

    seconds = [4.0] * 20 + [12.0, 0.0]  # a clip too long to pack, one of nothing
    windows = plan_packed_windows(seconds, 1.0, seed=3)
    packed = [i for w in windows for i in w]
    assert len(packed) == len(set(packed)) == 20  # every packable clip once, the long and the empty never
    gap = DecodeOptions().pack_gap_seconds
    assert all(len(w) > 1 and sum(seconds[i] + gap for i in w) <= 29.0 for w in windows)
    assert max(len(w) for w in windows) == 5  # full windows: 5 x (4 s + 1 s) = 25 s, a sixth would pass 29 s
    assert plan_packed_windows(seconds, 1.0, seed=3) == windows
    assert plan_packed_windows(seconds, 1.0, seed=4) != windows
    half = [i for w in plan_packed_windows(seconds, 0.5, seed=3) for i in w]
    assert 8 <= len(half) <= 10  # a window left with one clip is dropped: that clip trains alone
    assert plan_packed_windows(seconds, 0.0, seed=3) == []


def test_later_window_plans_pack_the_same_clips_differently_in_as_many_rows() -> None:
    from training.packing import plan_packed_windows

    seconds = [3.0 + (i % 5) for i in range(30)] + [12.0]  # 3-7 s clips and one too long to pack
    first = plan_packed_windows(seconds, 0.5, seed=3)

    def rows(windows: list[list[int]]) -> int:  # clips alone + windows
        return len(seconds) - sum(len(w) for w in windows) + len(windows)

    later = [plan_packed_windows(seconds, 0.5, 3, plan=k) for k in (1, 2, 3)]
    for windows in later:
        assert sorted(i for w in windows for i in w) == sorted(i for w in first for i in w)  # the same clips
        assert rows(windows) == rows(first)
        assert {frozenset(w) for w in windows} != {frozenset(w) for w in first}  # other neighbours
    assert later[0] != later[1]
    assert plan_packed_windows(seconds, 0.5, 3, plan=2) == later[1]  # reproducible


def test_rows_by_epoch_switch_with_the_trainer_epoch() -> None:
    from types import SimpleNamespace

    from training.packing import RowsByEpoch

    rows = RowsByEpoch([["a0", "a1"], ["b0", "b1"]])
    switch = rows.callback()
    assert len(rows) == 2 and rows[1] == "a1"
    for epoch, expected in [(1.0, "b0"), (1.9999999, "a0"), (2.5, "a0"), (3.0, "b0"), (0.0, "a0")]:
        switch.on_epoch_begin(None, SimpleNamespace(epoch=epoch), None)
        assert rows[0] == expected
    with pytest.raises(ValueError):
        RowsByEpoch([["a"], ["b", "c"]])


def test_build_dataset_trains_a_share_of_clips_in_packed_windows(tmp_path: Path, tiny_whisper_dir: Path) -> None:
    from ml_backend.decoding import DecodeOptions
    from tests.training_data import make_home
    from training.base_model import load_processor
    from training.dataset import build_dataset
    from training.packing import PACK_PREFIX

    home = tmp_path / "home"
    manifest = make_home(home, sessions=6, per_session=3)
    processor = load_processor(tiny_whisper_dir, "es")
    options = DatasetOptions(test_fraction=0.0, validation_fraction=0.2)
    alone = build_dataset(manifest, home / "datasets", processor, options)
    built = build_dataset(manifest, home / "datasets", processor, DatasetOptions(**{**options.__dict__, "pack_fraction": 1.0}))

    assert built.sizes == alone.sizes  # clips, not rows
    train = built.dataset["train"].with_format("numpy")
    windows = [row for row in train if row["segment_key"].startswith(PACK_PREFIX)]
    assert built.packed_windows == len(windows) >= 1 and len(train) == built.sizes["train"] - built.packed_clips + len(windows)
    # every training clip is trained on once: alone or in one window
    singles = [row["audio_path"] for row in train if not row["parts"]]
    in_windows = [path for row in windows for path in row["parts"].split("\n")]
    assert sorted(singles + in_windows) == sorted(alone.dataset["train"]["audio_path"])
    assert "validation" in built.dataset and not any(built.dataset["validation"]["parts"])

    window = windows[0]
    paths = window["parts"].split("\n")
    gap = np.zeros(int(DecodeOptions().pack_gap_seconds * 16_000), dtype=np.float32)
    audio = np.concatenate([piece for p in paths for piece in (decode(p), gap)][:-1])
    expected = processor.feature_extractor(audio, sampling_rate=16_000).input_features[0]
    np.testing.assert_allclose(window["input_features"], expected, atol=1e-5)
    by_path = dict(zip(alone.dataset["train"]["audio_path"], alone.dataset["train"]["transcript"], strict=True))
    text = processor.tokenizer.decode(window["labels"], skip_special_tokens=True)
    assert text == " ".join(by_path[p] for p in paths)

    # One arrangement per epoch: the same clips and rows, other windows; the first is the train split.
    plans = build_dataset(manifest, home / "datasets", processor, DatasetOptions(**{**options.__dict__, "pack_fraction": 1.0, "pack_plans": 3}))
    assert plans.dataset["train"]["segment_key"] == built.dataset["train"]["segment_key"]
    assert len(plans.train_by_epoch) == 3 and plans.train_by_epoch[0]["segment_key"] == built.dataset["train"]["segment_key"]
    for epoch in plans.train_by_epoch[1:]:
        assert len(epoch) == len(train)
        clips = [p for r in epoch for p in (r["parts"].split("\n") if r["parts"] else [r["audio_path"]])]
        assert sorted(clips) == sorted(alone.dataset["train"]["audio_path"])  # each clip once, alone or in a window
    layouts = [{r["parts"] for r in e if r["parts"]} for e in plans.train_by_epoch]
    assert len({frozenset(x) for x in layouts}) > 1


def test_a_reader_of_the_splits_keeps_the_test_share_the_training_chose(tmp_path: Path) -> None:
    # The training assigns with its own test share; the evaluation reads the split without options and must
    # neither record the default share over it nor assign later sessions with the default.
    manifest = _write_manifest(tmp_path / "manifest.jsonl", _rows(range(10)))
    by_split, _ = split_rows(manifest, tmp_path, DatasetOptions(test_fraction=0.3, validation_fraction=0.1))
    assert len(by_split["test"]) == 12  # three of ten sessions of four clips: the first past 30 %
    assert json.loads((tmp_path / SPLITS_FILE).read_text())["test_fraction"] == 0.3

    _write_manifest(manifest, _rows(range(30)))
    by_split, _ = split_rows(manifest, tmp_path)  # as training.evaluate.test_set reads it
    recorded = json.loads((tmp_path / SPLITS_FILE).read_text())
    assert (recorded["test_fraction"], recorded["validation_fraction"]) == (0.3, 0.1)
    assert len(by_split["test"]) >= 0.3 * 30 * 4
