"""Log-mel features and label ids of manifest rows, computed once and cached as Arrow files.

Audio is read with soundfile (``ml_backend.audio``): ``datasets.Audio`` decoding needs torchcodec,
which does not work with the CPU torch here. Features and labels are cached keyed by the rows and the
feature-extractor/tokenizer configuration. They are transformers' ``WhisperFeatureExtractor``'s, not the
serving engine's; see ``FEATURE_FUNCTION``. Each file written is recorded in ``cache/written.jsonl``
(split, rows, process rank), so a multi-process run can show that only its main process computed features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.audio import SAMPLE_RATE, AudioError, decode, rms_dbfs
from ml_backend.decoding import DecodeOptions
from training.manifest import DatasetOptions
from training.normalize import normalise

CACHE_SUBDIR = "cache"
CACHE_LOG = "written.jsonl"
MAX_LABEL_TOKENS = 448  # Whisper's decoder context
# Training features are WhisperFeatureExtractor's (audio padded to 30 s, then log-mel), although the engine
# serves with faster-whisper's (the clip's log-mel, zero-padded). Training on the served features was
# measured and is worse: bench/quality/run.py, same recipe and seed, accent WER -16.1 % and standard
# +75 % (the gate refused it) against -33.9 % and -5 % with these. Part of the cache key.
FEATURE_FUNCTION = "transformers.WhisperFeatureExtractor"
PARTS_SEPARATOR = "\n"  # between the audio paths of a window's clips (column ``parts``)


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

