"""The replay set: standard Spanish mixed into training runs, so a model learning the accent keeps the language.

Rehearsal: a LoRA tuned on accented speech alone learnt to add a final "s" everywhere and got worse on
standard Spanish (DESIGN.md). Keeping some standard speech in every batch gives the optimiser a reason
not to move what standard speech needs. The replay clips are never labelled by anyone: they are
synthesised from :data:`synth.sentences.REPLAY` (sentences that no test, demo or benchmark
set contains) by the *training* voices of :mod:`synth.voices` only (Kokoro's natural voices
when installed, espeak-ng's otherwise), so the regression set's held-out voices stay unheard.

The default set is generated once per machine into ``<cache>/replay/<key>/`` (``key`` = a digest of
sentences, voices and format: change any and a new set is made), built beside its final place and
renamed when complete, then hard-linked (or copied) into ``<home>/datasets/replay/<key>/``, so a work dir
is self-contained. Its manifest names audio relative to itself.

A quarter of the replay sentences (chosen by a hash of the text, all their clips together) is held out
of rehearsal as a standard-speech *validation* set: it picks the weight-space interpolation weight
(``training.interpolate``). The regression set is never used for that: it is the gate's judge.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.manifest import read_manifest
from training.normalize import normalise

log = logging.getLogger(__name__)

REPLAY_SUBDIR = "replay"
MANIFEST_NAME = "manifest.jsonl"
INFO_NAME = "replay_set.json"
VALIDATION_FRACTION = 0.25
FORMAT = 1  # bump when the layout or the way clips are planned changes


class ReplaySetError(RuntimeError):
    """The replay set cannot be made or read; ``str()`` says which file and why."""


@dataclass
class ReplaySet:
    """A replay manifest split into the rehearsal pool and the standard-speech validation slice."""

    manifest: Path
    pool: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def machine_cache_dir() -> Path:
    from ml_backend.whisper_files import cache_dir

    return cache_dir() / REPLAY_SUBDIR


def default_families() -> tuple[str, ...]:
    """Kokoro (natural voices) when the voice model is installed; espeak-ng only without it.

    A teacher's recordings are natural speech. On bench/quality (bench/README.md, "Rehearsal with natural-voice replay"), rehearsal with the
    Kokoro half of a mixed set at half the ratio (about as many Kokoro clips, no espeak-ng ones, so more of
    the 300-clip budget left to the accent) did better on natural standard speech and on the accent.
    """
    from synth.kokoro import kokoro_installed
    from synth.voices import ESPEAK, KOKORO

    return (KOKORO,) if kokoro_installed() else (ESPEAK,)


def _content_key(sentences: Sequence[Any], families: Sequence[str]) -> str:
    from synth.voices import training_voices

    material = {
        "format": FORMAT,
        "sentences": [(s.id, s.text) for s in sentences],
        "voices": {family: list(training_voices(family)) for family in families},
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _install_dir(building: Path, destination: Path) -> Path:
    """Rename a complete ``building`` dir to ``destination``; if another process got there first, keep theirs."""
    try:
        os.replace(building, destination)
    except OSError:
        if not (destination / MANIFEST_NAME).is_file():
            raise
        shutil.rmtree(building, ignore_errors=True)
    return destination


def _has_voice(backend: Any, voice: str) -> bool:
    # Kokoro blends ("jf_alpha+jf_tebukuro") are voices too, though not in the bundled list.
    has_voice = getattr(backend, "has_voice", None)
    return bool(has_voice(voice)) if has_voice is not None else voice in backend.voices


def _synthesise(out_dir: Path, sentences: Sequence[Any], families: Sequence[str], progress: bool) -> list[dict[str, Any]]:
    """Every sentence spoken once per family, voices rotating over that family's training voices."""
    from synth.voices import speaker_label, training_voices
    from training.corpus import build_corpus, make_backend, plan_clips

    rows: list[dict[str, Any]] = []
    for family in families:
        backend = make_backend(family)
        voices = [v for v in training_voices(family) if _has_voice(backend, v)]
        if not voices:
            raise ReplaySetError(f"{family}: none of its training voices ({', '.join(training_voices(family))}) is available")
        plans = plan_clips(sentences, voices, accented=False, name=f"replay-{family}")
        result = build_corpus(out_dir / family, plans, backend, progress=progress, description=f"replay set ({family})")
        if result.failed:
            raise ReplaySetError(f"replay set: {len(result.failed)} clip(s) could not be made; first: {result.failed[0]}")
        for row in result.rows:
            voice = row.speaker.partition(":")[2] or row.speaker
            rows.append(
                {
                    "audio_path": str(Path(row.audio_path).relative_to(out_dir.resolve())),
                    "transcript": row.transcript,
                    "duration": row.duration,
                    "speaker": speaker_label(family, voice),
                    "session": row.session,
                    "notes": f"replay set: standard Spanish, {family} voice {voice}",
                    "segment_key": row.segment_key,
                    "sha256": row.sha256,
                }
            )
        # The per-family manifests name the building dir by absolute path: only the combined one stays.
        for name in (MANIFEST_NAME, "manifest.csv"):
            (out_dir / family / name).unlink(missing_ok=True)
    return rows


def generate_cached(
    sentences: Sequence[Any] | None = None,
    families: Sequence[str] | None = None,
    *,
    cache: Path | None = None,
    progress: bool = True,
) -> Path:
    """The machine-wide copy of the replay set (made on first use); returns its directory."""
    from synth.sentences import REPLAY

    sentences = tuple(sentences if sentences is not None else REPLAY)
    families = tuple(families or default_families())
    key = _content_key(sentences, families)
    root = Path(cache) if cache is not None else machine_cache_dir()
    destination = root / key
    if (destination / MANIFEST_NAME).is_file():
        return destination
    root.mkdir(parents=True, exist_ok=True)
    building = root / f".{key}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    try:
        log.warning("making the replay set once for this machine (%d sentences, %s voices) in %s",
                    len(sentences), " and ".join(families), destination)
        rows = _synthesise(building, sentences, families, progress)
        info = {"key": key, "format": FORMAT, "families": list(families), "sentences": len(sentences), "clips": len(rows)}
        _write_text_atomic(building / INFO_NAME, json.dumps(info, indent=2) + "\n")
        _write_text_atomic(building / MANIFEST_NAME, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return _install_dir(building, destination)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _link_tree(source: Path, destination: Path) -> None:
    """Hard links where the filesystem allows (no second copy of the audio), copies elsewhere."""
    for path in sorted(source.rglob("*")):
        target = destination / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def ensure_replay_set(
    datasets_dir: Path,
    manifest: str | os.PathLike[str] | None = None,
    *,
    sentences: Sequence[Any] | None = None,
    families: Sequence[str] | None = None,
    cache: Path | None = None,
    progress: bool = True,
) -> Path:
    """The replay manifest: ``manifest`` if given, else the default set in ``<datasets_dir>/replay/``."""
    if manifest is not None:
        path = Path(manifest)
        if not path.is_file():
            raise ReplaySetError(f"{path}: replay manifest not found")
        return path
    cached = generate_cached(sentences, families, cache=cache, progress=progress)
    root = Path(datasets_dir) / REPLAY_SUBDIR
    destination = root / cached.name
    if (destination / MANIFEST_NAME).is_file():
        return destination / MANIFEST_NAME
    root.mkdir(parents=True, exist_ok=True)
    building = root / f".{cached.name}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    try:
        _link_tree(cached, building)
        _install_dir(building, destination)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    # Sets made from older sentences or voices are no longer used by anything (only ours: they hold INFO_NAME).
    for stale in root.iterdir():
        if stale.is_dir() and stale.name != destination.name and (stale / INFO_NAME).is_file():
            with contextlib.suppress(OSError):
                shutil.rmtree(stale)
    return destination / MANIFEST_NAME


# ---------------------------------------------------------------------------------------------- use


def _sentence_rank(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()


def split_replay(rows: Sequence[dict[str, Any]], fraction: float = VALIDATION_FRACTION) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rehearsal pool, validation slice): whole sentences go to one side, chosen by a hash of their text.

    A hash rather than a seed: the validation slice must stay the same across runs and seeds, so the
    interpolation weights of different runs are chosen on the same clips.
    """
    sentences = sorted({normalise(r["transcript"]) for r in rows}, key=_sentence_rank)
    held = math.ceil(fraction * len(sentences)) if len(sentences) > 1 and fraction > 0 else 0
    held = min(held, len(sentences) - 1) if sentences else 0
    validation_sentences = set(sentences[:held])
    pool = [r for r in rows if normalise(r["transcript"]) not in validation_sentences]
    validation = [r for r in rows if normalise(r["transcript"]) in validation_sentences]
    return pool, validation


def load_replay(manifest: Path, fraction: float = VALIDATION_FRACTION) -> ReplaySet:
    rows, problems = read_manifest(Path(manifest))
    if not rows:
        raise ReplaySetError(f"{manifest}: no usable replay rows")
    pool, validation = split_replay(rows, fraction)
    return ReplaySet(Path(manifest), pool, validation, problems)
