"""From the pull manifest to a ``datasets.DatasetDict`` of train / validation / test, split by session.

Why by session: segments of one classroom session share the speaker, the room and often the words;
a session in both train and test would measure memory, not recognition.

Why a persisted split: WERs of successive model versions only compare on the same test audio. The
first assignment is written to ``<home>/datasets/splits.json``; later rounds keep every known
session where it was and assign only new sessions. A segment once in test stays in test.

Audio is read with soundfile (``ml_backend.audio``): ``datasets.Audio`` decoding needs torchcodec,
which does not work with the CPU torch here. Log-mel features and label ids are computed once and
cached as Arrow files keyed by the rows and the feature-extractor/tokenizer configuration. They are
transformers' ``WhisperFeatureExtractor``'s, not the serving engine's; see ``FEATURE_FUNCTION``. Each
file written is recorded in ``cache/written.jsonl`` (split, rows, process rank), so a multi-process run
can show that only its main process computed features.

Packed windows: the backend decodes short clips several to one 30-s window (``ml_backend.engine.plan_windows``),
so ``pack_fraction`` of the training clips (replay clips included) are trained on that way: after the split and the
filters, a seeded share of the train split's clips is laid into windows as the engine lays them (1-s gaps,
a 1-s margin) and each window becomes one training row whose transcript is its clips' in order. Each
clip is trained on once per epoch, alone or in its window. Validation and test stay one clip per row.

Rehearsal: rows of a replay set (``training.replay_set``) join the *train* split only, after the split
is made; they never enter ``splits.json``, validation or test.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.audio import SAMPLE_RATE, AudioError, decode
from ml_backend.engine import DecodeOptions, plan_windows
from training.metrics import rms_dbfs
from training.normalize import normalise

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLITS_FILE = "splits.json"
MANIFEST_JSONL = "manifest.jsonl"
MANIFEST_CSV = "manifest.csv"
CACHE_SUBDIR = "cache"
CACHE_LOG = "written.jsonl"
REQUIRED_COLUMNS = ("audio_path", "transcript")
MAX_LABEL_TOKENS = 448  # Whisper's decoder context
# Training features are WhisperFeatureExtractor's (audio padded to 30 s, then log-mel), although the engine
# serves with faster-whisper's (the clip's log-mel, zero-padded). Training on the served features was
# measured and is worse: bench/quality/run.py, same recipe and seed, accent WER -16.1 % and standard
# +75 % (the gate refused it) against -33.9 % and -5 % with these. Part of the cache key.
FEATURE_FUNCTION = "transformers.WhisperFeatureExtractor"
PACK_PREFIX = "pack:"  # segment_key of a packed training window: pack:<first clip's key>+<other clips>
PARTS_SEPARATOR = "\n"  # between the audio paths of a window's clips (column ``parts``)


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
    test_fraction: float = 0.15,
    validation_fraction: float = 0.15,
    seed: int = 13,
) -> dict[str, str]:
    """Session -> split for every session in ``rows``; known sessions keep their split; persisted."""
    state = load_splits(splits_path)
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
    options: DatasetOptions = DatasetOptions(),
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Manifest rows by split (no audio read, no features) and the problem lines of the manifest."""
    rows, problems = read_manifest(manifest_path)
    if not rows:
        raise DatasetError(f"{manifest_path}: no usable rows")
    assignment = assign_splits(
        rows,
        Path(datasets_dir) / SPLITS_FILE,
        test_fraction=options.test_fraction,
        validation_fraction=options.validation_fraction,
        seed=options.seed,
    )
    by_split: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for row in rows:
        by_split[assignment[row["session"]]].append(row)
    return by_split, problems


# ---------------------------------------------------------------------------------------------- features


@dataclass
class BuiltDataset:
    dataset: Any  # datasets.DatasetDict with input_features, labels and the row metadata
    rejected: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    hours: dict[str, float] = field(default_factory=dict)
    split_ids: dict[str, str] = field(default_factory=dict)
    cache_files: dict[str, str] = field(default_factory=dict)
    replay_clips: int = 0  # replay rows in the train split (after filtering)
    replay_hours: float = 0.0
    replay_wanted: int = 0  # what the ratio asked for (more than the pool had, or filtered out, shows here)
    packed_windows: int = 0  # train rows that are packed windows
    packed_clips: int = 0  # clips trained on in those windows (sizes count clips, not rows)
    # With DatasetOptions.pack_plans > 1: the train split of each epoch in turn (the first is
    # ``dataset["train"]``); every one has the same clips and the same number of rows.
    train_by_epoch: list[Any] = field(default_factory=list)


def _file_fingerprint(row: dict[str, Any]) -> str:
    if row.get("sha256"):
        return str(row["sha256"])
    try:
        stat = os.stat(row["audio_path"])
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _parts_fingerprint(row: dict[str, Any]) -> list[str]:
    parts = row.get("parts") or ""
    return [_file_fingerprint({"audio_path": path}) for path in parts.split(PARTS_SEPARATOR)] if parts else []


def cache_key(rows: Sequence[dict[str, Any]], processor: Any, options: DatasetOptions) -> str:
    """Changes when any row, the audio bytes, the feature extractor, the tokenizer or a filter changes."""
    tokenizer = processor.tokenizer
    material = {
        "rows": [(r["segment_key"], r["audio_path"], _file_fingerprint(r), r["transcript"], _parts_fingerprint(r)) for r in rows],
        "features": [processor.feature_extractor.to_dict(), FEATURE_FUNCTION],
        "tokenizer": [len(tokenizer), tokenizer.prefix_tokens, tokenizer.eos_token_id],
        "filters": [options.min_duration, options.max_duration, options.min_dbfs],
        "format": 4,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:20]


def prepare_processor(processor: Any, language: str = "es") -> Any:
    """Labels start with <|startoftranscript|><|es|><|transcribe|><|notimestamps|>, as in decoding."""
    processor.tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    return processor


def _featurize_batch(batch: dict[str, list[Any]], processor: Any, options: DatasetOptions) -> dict[str, list[Any]]:
    n_mels = processor.feature_extractor.feature_size
    frames = processor.feature_extractor.nb_max_frames
    out: dict[str, list[Any]] = {"input_features": [], "labels": [], "problem": [], "loudness_dbfs": [], "seconds": []}
    gap = np.zeros(int(DecodeOptions().pack_gap_seconds * SAMPLE_RATE), dtype=np.float32)
    for path, text, parts in zip(batch["audio_path"], batch["transcript"], batch["parts"], strict=True):
        problem = ""
        features = np.zeros((n_mels, frames), dtype=np.float32)
        labels: list[int] = []
        level = -np.inf
        seconds = 0.0
        try:
            if parts:
                # A packed window: its clips passed the filters alone; laid out as the engine lays them.
                clips = [decode(part) for part in parts.split(PARTS_SEPARATOR)]
                samples = np.concatenate([piece for clip in clips for piece in (clip, gap)][:-1])
                seconds = sum(len(clip) for clip in clips) / SAMPLE_RATE  # speech, not the gaps
            else:
                samples = decode(path)
                seconds = len(samples) / SAMPLE_RATE
            level = rms_dbfs(samples)
            if seconds < options.min_duration:
                problem = f"too short ({seconds:.2f} s < {options.min_duration} s)"
            elif seconds > options.max_duration:
                problem = f"too long ({seconds:.1f} s > {options.max_duration:.0f} s)"
            elif level < options.min_dbfs:
                problem = f"inaudible (speech level {level:.0f} dBFS < {options.min_dbfs:.0f} dBFS)"
            else:
                features = processor.feature_extractor(samples, sampling_rate=SAMPLE_RATE).input_features[0]
                labels = processor.tokenizer(text).input_ids
                if len(labels) > MAX_LABEL_TOKENS:
                    problem = f"transcript too long ({len(labels)} tokens > {MAX_LABEL_TOKENS})"
                    labels = []
        except (AudioError, FileNotFoundError) as exc:
            problem = str(exc) if isinstance(exc, AudioError) else "audio file missing"
        out["input_features"].append(np.asarray(features, dtype=np.float32))
        out["labels"].append(labels)
        out["problem"].append(problem)
        out["loudness_dbfs"].append(float(level) if np.isfinite(level) else -200.0)
        out["seconds"].append(seconds)
    return out


def featurize_rows(
    rows: Sequence[dict[str, Any]],
    processor: Any,
    options: DatasetOptions,
    cache_dir: Path,
    *,
    split: str = "data",
) -> tuple[Any, list[str], str]:
    """(datasets.Dataset of usable rows with features, rejection lines, cache file)."""
    import datasets

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(rows, processor, options)
    cache_file = cache_dir / f"{split}-{key}.arrow"
    existed = cache_file.is_file()
    rejected: list[str] = []
    usable = []
    for row in rows:
        if not normalise(row["transcript"]):
            rejected.append(f"{row['segment_key']}: empty transcript ({row['audio_path']}); skipped")
        else:
            usable.append(row)
    columns = ("audio_path", "transcript", "segment_key", "session", "speaker", "parts")
    meta = {c: [str(r.get(c) or "") for r in usable] for c in columns}
    n_mels = processor.feature_extractor.feature_size
    frames = processor.feature_extractor.nb_max_frames
    features = datasets.Features(
        {
            **{c: datasets.Value("string") for c in columns},
            "input_features": datasets.Array2D(shape=(n_mels, frames), dtype="float32"),
            "labels": datasets.List(datasets.Value("int32")),
            "problem": datasets.Value("string"),
            "loudness_dbfs": datasets.Value("float32"),
            "seconds": datasets.Value("float32"),
        }
    )
    table = datasets.Dataset.from_dict(meta, features=datasets.Features({c: datasets.Value("string") for c in columns}))
    mapped = table.map(
        _featurize_batch,
        batched=True,
        batch_size=16,
        writer_batch_size=64,
        fn_kwargs={"processor": processor, "options": options},
        features=features,
        cache_file_name=str(cache_file),
        load_from_cache_file=True,
        # Our key already covers rows, feature extractor, tokenizer and filters; without it datasets
        # fingerprints the transform by pickling the whole tokenizer, which costs seconds per split.
        new_fingerprint=f"{split}-{key}",
        desc=f"log-mel features ({split})",
    )
    for key_, path, problem in zip(mapped["segment_key"], mapped["audio_path"], mapped["problem"], strict=True):
        if problem:
            rejected.append(f"{key_}: {problem} ({path}); skipped")
    keep = [i for i, problem in enumerate(mapped["problem"]) if not problem]
    kept = mapped.select(keep) if len(keep) < len(mapped) else mapped
    if not existed:
        _log_cache_write(cache_dir, cache_file, split, len(usable))
    return kept, rejected, str(cache_file)


def _process_rank() -> int:
    # torchrun and accelerate both set RANK for every process of a multi-process run.
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _log_cache_write(cache_dir: Path, cache_file: Path, split: str, rows: int) -> None:
    import datetime as dt

    entry = {
        "file": cache_file.name,
        "split": split,
        "rows": rows,
        "rank": _process_rank(),
        "pid": os.getpid(),
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    # One short O_APPEND write per line: lines of concurrent writers do not interleave.
    fd = os.open(cache_dir / CACHE_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def cache_writes(cache_dir: Path) -> list[dict[str, Any]]:
    """Who wrote which feature cache file (one entry per file computed, not per file read)."""
    path = Path(cache_dir) / CACHE_LOG
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line after a crash
    return entries


def mix_replay(
    train_rows: Sequence[dict[str, Any]], replay_pool: Sequence[dict[str, Any]], ratio: float, seed: int
) -> list[dict[str, Any]]:
    """The replay rows to add to ``train_rows``: ``round(ratio * len(train_rows))`` of the pool, a seeded draw.

    Keys are made distinct from the user's (a ``replay:`` prefix) so a replay clip can never be taken
    for one of theirs, in the cache key or in a report.
    """
    if ratio <= 0 or not replay_pool or not train_rows:
        return []
    count = max(0, round(ratio * len(train_rows)))
    ordered = sorted(replay_pool, key=lambda r: r["segment_key"])
    if count > len(ordered):
        log.warning("replay: %d clips wanted (ratio %g of %d) but the pool has %d; using all of them",
                    count, ratio, len(train_rows), len(ordered))
        chosen = ordered
    else:
        chosen = sorted(random.Random(seed).sample(ordered, count), key=lambda r: r["segment_key"])
    return [{**r, "segment_key": r["segment_key"] if r["segment_key"].startswith("replay:") else f"replay:{r['segment_key']}"}
            for r in chosen]


def build_dataset(
    manifest_path: Path,
    datasets_dir: Path,
    processor: Any,
    options: DatasetOptions = DatasetOptions(),
    *,
    replay_pool: Sequence[dict[str, Any]] = (),
    replay_ratio: float = 0.0,
    replay_seed: int = 0,
    extra_sets: dict[str, Sequence[dict[str, Any]]] | None = None,
) -> BuiltDataset:
    """Split, filter and featurize the manifest; features are read from the cache when unchanged.

    ``replay_pool`` rows are mixed into the train split (``replay_ratio`` of its clips, drawn with
    ``replay_seed``); ``extra_sets`` (name -> rows) are featurized as further named sets, outside the split.
    """
    import datasets

    by_split, problems = split_rows(manifest_path, datasets_dir, options)
    replay = mix_replay(by_split["train"], replay_pool, replay_ratio, replay_seed)
    cache_dir = Path(datasets_dir) / CACHE_SUBDIR
    parts = {}
    result = BuiltDataset(dataset=None, rejected=list(problems), replay_wanted=round(replay_ratio * len(by_split["train"])) if replay_pool else 0)
    to_featurize: dict[str, list[dict[str, Any]]] = {split: list(by_split[split]) for split in SPLITS}
    to_featurize["train"] += replay
    for name, rows in (extra_sets or {}).items():
        if name in SPLITS:
            raise ValueError(f"extra set {name!r} would replace a split")
        to_featurize[name] = list(rows)
    for split, rows in to_featurize.items():
        if split in SPLITS:
            result.split_ids[split] = split_id(by_split[split])
        if not rows:
            parts[split] = None
            continue
        data, rejected, cache_file = featurize_rows(rows, processor, options, cache_dir, split=split)
        parts[split] = data
        result.rejected.extend(rejected)
        result.cache_files[split] = cache_file
    if replay and parts.get("train") is not None:
        train = parts["train"]
        flags = [k.startswith("replay:") for k in train["segment_key"]]
        result.replay_clips = sum(flags)
        result.replay_hours = float(sum(s for s, f in zip(train["seconds"], flags, strict=True) if f)) / 3600.0
    if options.pack_fraction > 0 and parts.get("train") is not None:
        unpacked = parts["train"]
        parts["train"], result.packed_windows, result.packed_clips = _with_packed_windows(
            unpacked, processor, options, cache_dir, result.rejected
        )
        if options.pack_plans > 1 and result.packed_windows:
            result.train_by_epoch = _epoch_plans(unpacked, parts["train"], processor, options, cache_dir)
    for line in result.rejected:
        log.warning("%s", line)
    result.dataset = datasets.DatasetDict({k: v for k, v in parts.items() if v is not None and len(v)})
    for split, data in result.dataset.items():
        result.sizes[split] = len(data) + (result.packed_clips - result.packed_windows if split == "train" else 0)
        result.hours[split] = float(sum(data["seconds"])) / 3600.0
    if result.sizes.get("train", 0) - result.replay_clips <= 0:
        raise DatasetError(f"{manifest_path}: no usable training segments after filtering")
    return result


def plan_packed_windows(seconds: Sequence[float], fraction: float, seed: int, plan: int = 0, tries: int = 200) -> list[list[int]]:
    """Clips (indices into ``seconds``) laid into 30-s windows, ``fraction`` of the packable ones.

    The windows are the engine's own plan (``ml_backend.engine.plan_windows``), fed a seeded random order
    instead of longest-first so that windows mix sessions, speakers and lengths. Clips longer than its
    ``pack_max_clip_seconds`` are never chosen; a window left with one clip is dropped: that clip trains alone.

    Plan number ``plan`` > 0 packs the same chosen clips in another order (other neighbours) into as many
    engine windows, single-clip ones included, so an epoch of any plan has as many rows as plan 0's and the
    trainer counts its steps once; when ``tries`` orders find none, it is plan 0's layout.
    """
    decoding = DecodeOptions()
    eligible = [i for i, s in enumerate(seconds) if 0 < s <= decoding.pack_max_clip_seconds]
    count = round(min(max(fraction, 0.0), 1.0) * len(eligible))
    if count < 2:
        return []

    def lay_out(order: list[int]) -> list[list[int]]:
        return plan_windows([round(seconds[i] * SAMPLE_RATE) for i in order], decoding)

    order = random.Random(seed).sample(eligible, count)
    windows = lay_out(order)
    rng = random.Random(f"{seed}/plan/{plan}")
    for _ in range(tries if plan else 0):
        other = rng.sample(order, len(order))
        found = lay_out(other)
        if len(found) == len(windows):
            order, windows = other, found
            break
    return [[order[j] for j in window] for window in windows if len(window) > 1]


def _with_packed_windows(
    train: Any, processor: Any, options: DatasetOptions, cache_dir: Path, rejected: list[str], plan: int = 0
) -> tuple[Any, int, int]:
    """``train`` with ``options.pack_fraction`` of its clips (replay clips too: served windows mix the
    teacher's accent with everyone else's speech) moved into packed windows, rows of their own, laid out by
    plan number ``plan``. A window that fails featurization leaves its clips alone, so none is lost."""
    import datasets

    keys, seconds = train["segment_key"], train["seconds"]
    planned = plan_packed_windows(seconds, options.pack_fraction, options.pack_seed, plan)
    if not planned:
        return train, 0, 0
    paths, texts, sessions, speakers = train["audio_path"], train["transcript"], train["session"], train["speaker"]
    rows = [
        {
            "segment_key": f"{PACK_PREFIX}{keys[w[0]]}+{len(w) - 1}",
            "audio_path": paths[w[0]],
            "transcript": " ".join(texts[i].strip() for i in w),
            "session": sessions[w[0]],
            "speaker": speakers[w[0]],
            "parts": PARTS_SEPARATOR.join(paths[i] for i in w),
        }
        for w in planned
    ]
    windows, problems, _ = featurize_rows(rows, processor, options, cache_dir, split="train-windows")
    rejected.extend(f"{line} (its clips train alone)" for line in problems)
    kept = set(windows["segment_key"])
    packed = {i for w, row in zip(planned, rows, strict=True) if row["segment_key"] in kept for i in w}
    if not packed:
        return train, 0, 0
    alone = train.select([i for i in range(len(train)) if i not in packed])
    return datasets.concatenate_datasets([alone, windows]), len(windows), len(packed)


def _epoch_plans(train: Any, first: Any, processor: Any, options: DatasetOptions, cache_dir: Path) -> list[Any]:
    """The train split of every epoch in turn: ``first`` (plan 0), then one per further plan that has as
    many rows (a plan whose windows failed featurization is left out, with a line saying so)."""
    epochs = [first]
    for plan in range(1, options.pack_plans):
        problems: list[str] = []
        data, _, _ = _with_packed_windows(train, processor, options, cache_dir, problems, plan=plan)
        if len(data) != len(first):
            log.warning("packed-window plan %d has %d rows, not %d: left out", plan, len(data), len(first))
            continue
        epochs.append(data)
    return epochs


class RowsByEpoch:
    """A training split that is a different dataset every epoch (:attr:`BuiltDataset.train_by_epoch`, in turn).

    The trainer's sampler only needs ``len`` and indexing, and every epoch's dataset has as many rows, so
    the step count it computed once holds. In one process accelerate's dataloader calls :meth:`set_epoch`
    itself at each epoch's start; when it tells a distributed sampler instead, it skips the dataset, so
    :meth:`callback` also switches the epoch before each epoch's batches are drawn (also after a resume,
    from the trainer's own epoch counter), in every process of a run. Both give the same epoch.
    DataLoader workers copy it when an epoch starts, after the switch (workers are not kept across epochs:
    transformers' default, which training.train keeps).
    """

    def __init__(self, epochs: Sequence[Any]) -> None:
        if not epochs or len({len(e) for e in epochs}) != 1:
            raise ValueError("every epoch needs a dataset, all of one length")
        self.epochs = list(epochs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def current(self) -> Any:
        return self.epochs[self.epoch % len(self.epochs)]

    def __len__(self) -> int:
        return len(self.epochs[0])

    def __getitem__(self, index: int) -> Any:
        return self.current[index]

    def callback(self) -> Any:
        from transformers import TrainerCallback

        rows = self

        class _SwitchEpoch(TrainerCallback):
            def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                # state.epoch is the float progress so far: 2.0 (or 1.9999…) as epoch 3 begins, 2.5 mid-epoch on resume
                rows.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))

        return _SwitchEpoch()


def summary(built: BuiltDataset) -> dict[str, Any]:
    return {
        "sizes": built.sizes,
        "hours": built.hours,
        "split_ids": built.split_ids,
        "rejected": len(built.rejected),
    }


def sample_rows(rows: Sequence[dict[str, Any]], n: int, seed: int) -> list[dict[str, Any]]:
    """A seeded subset (for quick runs); all rows when ``n`` is not smaller."""
    if n >= len(rows):
        return list(rows)
    return random.Random(seed).sample(list(rows), n)


def options_dict(options: DatasetOptions) -> dict[str, Any]:
    return asdict(options)
