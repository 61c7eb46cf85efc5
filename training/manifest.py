"""The pull manifest, read and split by session into train / validation / test.

Why by session: segments of one classroom session share the speaker, the room and often the words;
a session in both train and test would measure memory, not recognition.

Why a persisted split: WERs of successive model versions only compare on the same test audio. The
first assignment is written to ``<home>/datasets/splits.json``; later rounds keep every known
session where it was and assign only new sessions. A segment once in test stays in test.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLITS_FILE = "splits.json"
MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
REQUIRED_COLUMNS = ("audio_path", "transcript")


class DatasetError(ValueError):
    """The manifest or split cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class DatasetOptions:
    """What goes into the dataset and how sessions are split."""

    test_fraction: float = 0.15
    validation_fraction: float = 0.15
    seed: int = 13
    min_duration: float = 0.3  # s; shorter clips are VAD blips, not words
    max_duration: float = 30.0  # s; Whisper's window
    min_dbfs: float = -60.0  # active speech level below this is inaudible
    pack_fraction: float = 0.0  # share of the train split's clips trained on in packed windows
    pack_seed: int = 0
    pack_plans: int = 1  # distinct arrangements of those clips into windows, one per epoch in turn


# ---------------------------------------------------------------------------------------------- manifest


def default_manifest(datasets_dir: Path) -> Path:
    return Path(datasets_dir) / MANIFEST_JSONL


def segment_key(row: dict[str, Any]) -> str:
    """``<session dir>/<file name>``; derived from the path when the manifest has no key column."""
    if row.get("segment_key"):
        return str(row["segment_key"])
    path = Path(str(row["audio_path"]))
    session = row.get("session") or path.parent.name
    return f"{session}/{path.name}"


def session_of(row: dict[str, Any]) -> str:
    return str(row.get("session") or segment_key(row).split("/", 1)[0])


def read_manifest(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of a JSONL or CSV manifest, and one line per row that could not be used."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found (run `habla-ls sync pull` first)")
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            raw_rows = [(i + 2, dict(r)) for i, r in enumerate(csv.DictReader(fh))]
    else:
        raw_rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw_rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(f"{path}:{number}: not JSON ({exc.msg}); row skipped")
    for number, row in raw_rows:
        missing = [c for c in REQUIRED_COLUMNS if not isinstance(row, dict) or row.get(c) in (None, "")]
        if missing:
            problems.append(f"{path}:{number}: missing {', '.join(missing)}; row skipped")
            continue
        audio = Path(str(row["audio_path"]))
        if not audio.is_absolute():
            audio = (path.parent / audio).resolve()
        row = {**row, "audio_path": str(audio), "transcript": str(row["transcript"])}
        row["segment_key"] = segment_key(row)
        row["session"] = session_of(row)
        row["speaker"] = str(row.get("speaker") or "")
        rows.append(row)
    seen: set[str] = set()
    unique = []
    for row in rows:
        if row["segment_key"] in seen:
            problems.append(f"{path}: {row['segment_key']}: duplicate row; the first one is used")
            continue
        seen.add(row["segment_key"])
        unique.append(row)
    return unique, problems


# ---------------------------------------------------------------------------------------------- split


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def load_splits(splits_path: Path) -> dict[str, Any]:
    path = Path(splits_path)
    if not path.is_file():
        return {"sessions": {}, "test_segments": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc.msg}); fix or delete it (test split would change)") from exc
    data.setdefault("sessions", {})
    data.setdefault("test_segments", [])
    return data


def _seeded_order(sessions: Iterable[str], seed: int) -> list[str]:
    # Hash rather than random.shuffle so the order of one session does not depend on which other
    # sessions happen to be new in the same round.
    return sorted(sessions, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())


def assign_splits(
    rows: Sequence[dict[str, Any]],
    splits_path: Path,
    *,
    test_fraction: float | None = None,
    validation_fraction: float | None = None,
    seed: int | None = None,
) -> dict[str, str]:
    """Session -> split for every session in ``rows``; known sessions keep their split; persisted.

    A fraction or seed left at None is the one the splits were last assigned with (DatasetOptions' default
    the first time): a reader such as the evaluation splits a new session as the training configured it."""
    state = load_splits(splits_path)
    if test_fraction is None:
        test_fraction = float(state.get("test_fraction", DatasetOptions.test_fraction))
    if validation_fraction is None:
        validation_fraction = float(state.get("validation_fraction", DatasetOptions.validation_fraction))
    if seed is None:
        seed = int(state.get("seed", DatasetOptions.seed))
    known: dict[str, str] = dict(state["sessions"])
    segments_per_session = Counter(r["session"] for r in rows)
    keys = {r["segment_key"]: r["session"] for r in rows}

    for key in state["test_segments"]:
        session = keys.get(key)
        if session is not None and known.get(session) != "test":
            log.warning("session %s holds test segment %s: the whole session stays in test", session, key)
            known[session] = "test"

    total = sum(segments_per_session.values())
    counts = Counter({split: 0 for split in SPLITS})
    for session, n in segments_per_session.items():
        if session in known:
            counts[known[session]] += n
    new = _seeded_order((s for s in segments_per_session if s not in known), seed)
    newly: list[str] = []
    for session in new:
        if counts["test"] < test_fraction * total and len(segments_per_session) > 1:
            split = "test"
        elif counts["validation"] < validation_fraction * total and len(segments_per_session) > 2:
            split = "validation"
        else:
            split = "train"
        known[session] = split
        counts[split] += segments_per_session[session]
        newly.append(session)
    # Training needs something to learn from: if all new sessions went to held-out splits, hand the
    # last one (never a session that was already held out in an earlier round) to train.
    if counts["train"] == 0 and newly:
        for session in reversed(newly):
            if known[session] != "test" or counts["test"] > segments_per_session[session]:
                counts[known[session]] -= segments_per_session[session]
                known[session] = "train"
                counts["train"] += segments_per_session[session]
                break

    test_segments = sorted(set(state["test_segments"]) | {k for k, s in keys.items() if known[s] == "test"})
    _write_json_atomic(
        Path(splits_path),
        {
            "seed": state.get("seed", seed),
            "test_fraction": test_fraction,
            "validation_fraction": validation_fraction,
            "sessions": dict(sorted(known.items())),
            "test_segments": test_segments,
        },
    )
    return {s: known[s] for s in segments_per_session}


def split_id(rows: Sequence[dict[str, Any]]) -> str:
    """A short fingerprint of a set of rows (which audio, which text): equal ids mean comparable WERs."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: r["segment_key"]):
        digest.update(f"{row['segment_key']}\t{row.get('sha256') or ''}\t{row['transcript']}\n".encode())
    return digest.hexdigest()[:16]


def split_rows(
    manifest_path: Path,
    datasets_dir: Path,
    options: DatasetOptions | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Manifest rows by split (no audio read, no features) and the problem lines of the manifest.

    Without ``options`` (a reader such as the evaluation), the splits' recorded fractions and seed: a training
    configured with another test share stays in charge (:func:`assign_splits`)."""
    rows, problems = read_manifest(manifest_path)
    if not rows:
        raise DatasetError(f"{manifest_path}: no usable rows")
    assignment = assign_splits(
        rows,
        Path(datasets_dir) / SPLITS_FILE,
        test_fraction=options.test_fraction if options else None,
        validation_fraction=options.validation_fraction if options else None,
        seed=options.seed if options else None,
    )
    by_split: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for row in rows:
        by_split[assignment[row["session"]]].append(row)
    return by_split, problems

