"""Reading a Habla recordings dir: sessions, their segment WAVs and the transcripts Habla wrote.

Layout and formats, as Habla's own code writes them (XRMechSolutions/HablaTranslate)::

    <recordings>/<session_id>_<YYYYmmdd>_<HHMMSS>/segment_NNN.wav   16 kHz mono s16 (habla/server/services/audio_recorder.py)
        raw_stream.webm              the browser's stream, optional (ignored here)
        metadata.json                written when the session stops: {session_id, started_at, ended_at,
                                     raw_audio_format, sample_rate, total_segments, segments: [{segment_id,
                                     filename, size_bytes, duration_seconds, recorded_at, raw_transcript,
                                     translation, speaker, confidence, idioms_detected}]}
                                     (raw_transcript/speaker/confidence added by habla/server/routes/websocket.py;
                                     confidence is the translator's, speaker may be null)
        ground_truth.json            habla/tools/generate_ground_truth.py (WhisperX large-v3): {generated_at,
                                     whisper_model, direction, total_segments, full_transcript, full_translation,
                                     segments: [{segment_id, filename, transcript, confidence, asr_time_seconds,
                                     translation, asr_corrections}]}; an empty transcript is written as
                                     "[inaudible]"; confidence is a mean avg_logprob, or 0 when WhisperX gives none
        corrected_ground_truth.json  the corrections page (habla/server/routes/api_corrections.py): the same
                                     segments plus reviewed/human_corrected, document-level corrected_at and
                                     correction_stats; unreviewed segments are copies of the ground truth

Only dirs named ``<session>_<YYYYmmdd>_<HHMMSS>`` are sessions. Anything else under the recordings dir
is left alone and reported as one :class:`SkippedDir` each: above all ``processed/``, where Habla's
orchestrator keeps debug copies of every ASR input (``asr_input_<ts>_NNNN.wav``) while recording is on.
Those are the same utterances a second time, without transcript or session, so pushing them would put
test sessions' speech into training.

A session without ``metadata.json`` is still recording (or crashed): it is read from its WAVs alone.
The WAV files are the truth about which segments exist; the JSON files only add transcripts, speakers
and confidences. Older or hand-written variants are tolerated (``transcript``/``text`` instead of
``raw_transcript``, ``file`` instead of ``filename``, entries keyed by ``segment_id`` only). Nothing
here raises on bad input: every problem becomes a :class:`Problem` record (file + one-line reason) and
the rest of the dir is read as usual. Audio content is checked later, when the archive copies it.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

METADATA_FILE = "metadata.json"
GROUND_TRUTH_FILE = "ground_truth.json"
CORRECTED_FILE = "corrected_ground_truth.json"

SESSION_DIR_RE = re.compile(r"^(?P<name>.+)_(?P<date>\d{8})_(?P<time>\d{6})$")
SESSION_NAME_FORM = "<session>_<YYYYmmdd>_<HHMMSS>"
# Habla's orchestrator (habla/server/pipeline/orchestrator.py) saves each ASR input here when recording is on.
PROCESSED_DIR = "processed"
ASR_INPUT_PREFIX = "asr_input_"
SKIPPED_DIRS_LISTED = 5  # names shown in the summary line; the rest are counted
SEGMENT_NUMBER_RE = re.compile(r"(\d+)")

# Transcript sources, best first; the names double as the prediction's ``model_version`` on push.
SOURCE_CORRECTED = "habla-corrected"
SOURCE_GROUND_TRUTH = "habla-ground-truth"
SOURCE_LIVE = "habla-live"
SOURCE_RANK = {SOURCE_CORRECTED: 3, SOURCE_GROUND_TRUTH: 2, SOURCE_LIVE: 1, None: 0}

# What Habla writes instead of a transcript (generate_ground_truth.py writes "[inaudible]" for an empty
# one; scripts/prepare_dataset.py skips all of these): not text to prefill.
PLACEHOLDER_TRANSCRIPTS = frozenset({"[inaudible]", "[unintelligible]", "[silence]", "..."})


@dataclass(frozen=True)
class Problem:
    """Something in the recordings dir that could not be used; ``str()`` is the line shown to the user."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class Segment:
    key: str  # "<session dir name>/<segment file name>"
    session: str
    filename: str
    path: Path
    speaker: str = ""
    transcript: str | None = None
    transcript_source: str | None = None
    habla_confidence: float | None = None  # as Habla wrote it: unreliable, see prefill_score()
    segment_id: int | None = None
    translation: str | None = None  # Habla's translation of the transcript (English for Spanish speech)
    recorded_at: datetime | None = None  # when the recorder saved the segment; else the session's start
    recorded_at_exact: bool = False  # False: the session's start stands in (a live session has no metadata)


@dataclass
class Session:
    name: str
    path: Path
    live: bool  # no metadata.json yet: still recording, or crashed
    started_at: datetime | None
    metadata: dict[str, Any] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=list)


@dataclass(frozen=True)
class SkippedDir:
    """A dir under the recordings root that is not a Habla session, so nothing in it is read."""

    path: Path
    wavs: int  # WAV files directly inside
    reason: str

    def describe(self) -> str:
        count = f"{self.wavs} WAV{'' if self.wavs == 1 else 's'}"
        return f"{self.path.name}/ ({count}: {self.reason})"


@dataclass
class RecordingsScan:
    root: Path
    sessions: list[Session] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped_dirs: list[SkippedDir] = field(default_factory=list)

    @property
    def segments(self) -> list[Segment]:
        return [segment for session in self.sessions for segment in session.segments]


def session_started_at(name: str) -> datetime | None:
    """The start time a session dir's name carries, or None when the name is not a session's."""
    match = SESSION_DIR_RE.match(name)
    if not match:
        return None
    try:
        return datetime.strptime(match["date"] + match["time"], "%Y%m%d%H%M%S")
    except ValueError:
        return None


def is_session_dir_name(name: str) -> bool:
    return session_started_at(name) is not None


def _not_a_session(entry: Path) -> SkippedDir:
    try:
        wavs = [e.name for e in os.scandir(entry) if e.name.lower().endswith(".wav") and not e.name.startswith(".")]
    except OSError:
        wavs = []
    if entry.name == PROCESSED_DIR or (wavs and all(w.startswith(ASR_INPUT_PREFIX) for w in wavs)):
        reason = "Habla's debug copies of its ASR input"
    else:
        reason = f"not named {SESSION_NAME_FORM}"
    return SkippedDir(entry, len(wavs), reason)


def skipped_dirs_line(dirs: list[SkippedDir]) -> str | None:
    """The one summary line about dirs that are not sessions (None when there are none)."""
    if not dirs:
        return None
    shown = ", ".join(d.describe() for d in dirs[:SKIPPED_DIRS_LISTED])
    more = f" and {len(dirs) - SKIPPED_DIRS_LISTED} more" if len(dirs) > SKIPPED_DIRS_LISTED else ""
    what = "1 dir that is not a Habla session" if len(dirs) == 1 else f"{len(dirs)} dirs that are not Habla sessions"
    return f"skipped {what}: {shown}{more}"


def segment_key(session: str, filename: str) -> str:
    return f"{session}/{filename}"


def segment_number(filename: str) -> int | None:
    digits = SEGMENT_NUMBER_RE.findall(Path(filename).stem)
    return int(digits[-1]) if digits else None


def prefill_score(confidence: Any, *, human_corrected: bool = False) -> float | None:
    """Habla's confidence mapped to a probability in [0, 1], or None when it carries no information.

    Habla writes 0 when it has no value, a Whisper average log-probability (negative), or a score that
    is already a probability. The rule: a human correction is 1.0; a value in (0, 1] is kept; a negative
    value is a log-probability, so exp() of it; a value in (1, 100] is a percentage; 0, missing,
    non-numbers and anything else are None (no score: the ML backend scores the task later).
    """
    if human_corrected:
        return 1.0
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not math.isfinite(confidence):
        return None
    if 0 < confidence <= 1:
        return float(confidence)
    if confidence < 0:
        return float(math.exp(max(confidence, -50.0)))
    if 1 < confidence <= 100:
        return float(confidence) / 100.0
    return None


def _read_json(path: Path, problems: list[Problem]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(str(path), f"unreadable ({exc.__class__.__name__})"))
        return None
    except json.JSONDecodeError as exc:
        problems.append(Problem(str(path), f"corrupt JSON (line {exc.lineno}: {exc.msg}); its transcripts are ignored"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(str(path), "corrupt JSON (expected an object); its transcripts are ignored"))
        return None
    return data


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def _entries(
    data: dict[str, Any] | None, json_path: Path, session_dir: Path, links: set[str], problems: list[Problem]
) -> dict[str, dict]:
    """Segment entries of a Habla JSON file by file name; entries naming files outside the dir are refused.
    ``links``: the names of the dir's symlinks."""
    if not data:
        return {}
    raw = data.get("segments", [])
    if not isinstance(raw, list):
        problems.append(Problem(str(json_path), "corrupt JSON ('segments' is not a list); its transcripts are ignored"))
        return {}
    entries: dict[str, dict] = {}
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        filename = entry.get("filename") or entry.get("file")
        if not filename and entry.get("segment_id") is not None:
            try:
                filename = f"segment_{int(entry['segment_id']):03d}.wav"
            except (TypeError, ValueError):
                filename = None
        if not isinstance(filename, str) or not filename:
            continue
        # Habla writes bare file names; anything with a directory part could point outside the session.
        # A bare name can only leave the dir as a symlink: only those are resolved (resolving every
        # entry was most of a 10,000-segment scan).
        if (
            "/" in filename
            or filename in (".", "..")
            or (filename in links and not _inside(session_dir / filename, session_dir))
        ):
            problems.append(Problem(str(json_path), f"segment filename {filename!r} escapes the session dir; ignored"))
            continue
        entries[filename] = entry
    return entries


def _text(entry: dict[str, Any] | None, *keys: str) -> str | None:
    for key in keys:
        value = (entry or {}).get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _transcript(entry: dict[str, Any] | None, *keys: str) -> str | None:
    """The entry's transcript, or None when it is missing, empty or one of Habla's placeholders."""
    text = _text(entry, *keys)
    return None if text is None or text.lower() in PLACEHOLDER_TRANSCRIPTS else text


def _timestamp(entry: dict[str, Any] | None) -> datetime | None:
    """The segment's ``recorded_at`` as Habla wrote it (ISO 8601, local time, offset kept if given)."""
    value = (entry or {}).get("recorded_at")
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def _reviewed(entry: dict[str, Any] | None) -> bool:
    return entry is not None and bool(entry.get("reviewed") or entry.get("human_corrected"))


def read_session(session_dir: Path, root: Path, problems: list[Problem]) -> Session:
    name = session_dir.name
    started_at = session_started_at(name)
    metadata_path = session_dir / METADATA_FILE
    metadata = _read_json(metadata_path, problems)
    live = not metadata_path.exists()
    ground_truth_path = session_dir / GROUND_TRUTH_FILE
    corrected_path = session_dir / CORRECTED_FILE
    # scandir's entries know from the directory listing whether they are links or files: no stat per file.
    in_dir = list(os.scandir(session_dir))
    links = {e.name for e in in_dir if e.is_symlink()}
    meta_entries = _entries(metadata, metadata_path, session_dir, links, problems)
    truth_entries = _entries(_read_json(ground_truth_path, problems), ground_truth_path, session_dir, links, problems)
    corrected_entries = _entries(_read_json(corrected_path, problems), corrected_path, session_dir, links, problems)
    session_speaker = _text(metadata, "speaker", "speaker_name", "teacher") or ""

    session = Session(name=name, path=session_dir, live=live, started_at=started_at, metadata=metadata or {})
    listed = sorted(
        (e for e in in_dir if e.name.lower().endswith(".wav") and not e.name.startswith(".")), key=lambda e: e.name
    )
    on_disk = {e.name for e in listed}
    for filename in sorted(set(meta_entries) | set(truth_entries) | set(corrected_entries)):
        if filename not in on_disk:
            problems.append(Problem(str(session_dir / filename), "listed in Habla's JSON but the WAV is missing"))
    for found in listed:
        filename = found.name
        wav = session_dir / filename
        if found.is_symlink() and not _inside(wav, root):
            problems.append(Problem(str(wav), "symlink pointing outside the recordings dir; refused"))
            continue
        if not found.is_file():
            problems.append(Problem(str(wav), "missing or not a regular file (dangling link?)"))
            continue
        meta = meta_entries.get(filename)
        corrected = corrected_entries.get(filename)
        # Unreviewed entries of the corrected file are Habla's copies of the ground truth.
        truth = truth_entries.get(filename) or (corrected if not _reviewed(corrected) else None)
        text, source, confidence = None, None, None
        if _reviewed(corrected) and (text := _transcript(corrected, "transcript", "corrected_transcript", "text")):
            source, confidence = SOURCE_CORRECTED, corrected.get("confidence")
        if text is None and (text := _transcript(truth, "transcript", "text")):
            source, confidence = SOURCE_GROUND_TRUTH, truth.get("confidence")
        if text is None and (text := _transcript(meta, "raw_transcript", "transcript", "text", "transcription")):
            source, confidence = SOURCE_LIVE, meta.get("confidence")
        segment_id = next(
            (e.get("segment_id") for e in (corrected, truth, meta) if e and isinstance(e.get("segment_id"), int)), None
        )
        if segment_id is None:
            segment_id = segment_number(filename)
        # The translation that goes with the transcript shown: the same file first, then any other.
        entries = {SOURCE_CORRECTED: corrected, SOURCE_GROUND_TRUTH: truth, SOURCE_LIVE: meta}
        ordered = (entries.get(source), corrected, truth, meta)
        translation = next((t for e in ordered if (t := _transcript(e, "translation"))), None)
        recorded_at = _timestamp(meta)
        session.segments.append(
            Segment(
                key=segment_key(name, filename),
                session=name,
                filename=filename,
                path=wav,
                speaker=_text(meta, "speaker") or _text(truth, "speaker") or session_speaker,
                transcript=text,
                transcript_source=source,
                habla_confidence=confidence if isinstance(confidence, int | float) else None,
                segment_id=segment_id,
                translation=translation,
                recorded_at=recorded_at or started_at,
                recorded_at_exact=recorded_at is not None,
            )
        )
    return session


def scan_recordings(root: str | Path, *, sessions: tuple[str, ...] | list[str] = ()) -> RecordingsScan:
    """Every session under ``root`` (or only those named in ``sessions``), oldest first."""
    root = Path(root).expanduser()
    scan = RecordingsScan(root=root)
    if not root.is_dir():
        scan.problems.append(Problem(str(root), "recordings dir not found"))
        return scan
    wanted = set(sessions)
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if wanted and entry.name not in wanted:
            continue
        if entry.is_symlink() and not _inside(entry, root):
            scan.problems.append(Problem(str(entry), "session dir is a symlink pointing outside the recordings dir; refused"))
            continue
        if not is_session_dir_name(entry.name):
            scan.skipped_dirs.append(_not_a_session(entry))
            continue
        try:
            scan.sessions.append(read_session(entry, root, scan.problems))
        except OSError as exc:
            scan.problems.append(Problem(str(entry), f"unreadable session dir ({exc.strerror or exc})"))
    for name in sorted(wanted - {s.name for s in scan.sessions} - {d.path.name for d in scan.skipped_dirs}):
        scan.problems.append(Problem(str(root / name), "no such session"))
    scan.sessions.sort(key=lambda s: (s.started_at or datetime.min, s.name))
    return scan
