"""The content-addressed audio archive: ``<home>/archive/<sha256[:2]>/<sha256>.wav``.

Habla deletes old sessions, so every segment is copied here before anything refers to it. The name is
the sha256 of the *original* file bytes as Habla wrote them (what task data and the ledger carry); the
stored file is always 16 kHz mono 16-bit WAV: Habla's own files are copied byte for byte, anything else
(another rate, stereo, float samples) is converted. Stereo is downmixed by averaging the channels:
classroom microphones record the same voice on both, and refusing it would lose usable speech.

Files appear atomically (written to a temp name, then renamed), so a crash never leaves a half file
under a final name, and a file under a final name is always a checked, usable clip.
"""

from __future__ import annotations

import hashlib
import io
import os
import wave
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ml_backend.audio import MAX_SECONDS, SAMPLE_RATE, AudioError, decode, encode_wav, probe

ARCHIVE_SUFFIX = ".wav"


@dataclass(frozen=True)
class ArchivedClip:
    sha256: str  # of the original bytes
    path: Path
    duration: float  # seconds
    original_sample_rate: int
    original_channels: int
    converted: bool  # resampled and/or downmixed
    already_there: bool

    @property
    def note(self) -> str | None:
        """A one-word note when the audio was changed on the way in, for the push summary."""
        notes = []
        if self.original_sample_rate != SAMPLE_RATE:
            notes.append(f"resampled from {self.original_sample_rate} Hz")
        if self.original_channels != 1:
            notes.append(f"downmixed from {self.original_channels} channels")
        return ", ".join(notes) or None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pcm16_mono_16k(data: bytes) -> tuple[int, int, int] | None:
    """(rate, channels, frames) of a complete 16-bit PCM WAV via the stdlib parser (the fast path for
    Habla's own files); frames is -1 for other sample widths or a truncated file, None if not PCM WAV."""
    try:
        with wave.open(io.BytesIO(data)) as wav:
            rate, channels, frames = wav.getframerate(), wav.getnchannels(), wav.getnframes()
            if wav.getsampwidth() != 2:
                return rate, channels, -1
            # A recorder killed mid-write leaves a header promising more frames than the file holds.
            if len(wav.readframes(frames)) != frames * 2 * channels:
                return rate, channels, -1
            return rate, channels, frames
    except (wave.Error, EOFError, ValueError):
        return None


class Archive:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}{ARCHIVE_SUFFIX}"

    def contains(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def check(self, data: bytes, *, max_seconds: float = MAX_SECONDS) -> tuple[bytes, float, int, int]:
        """(archive bytes, duration, original rate, original channels); AudioError if unusable."""
        header = _pcm16_mono_16k(data)
        if header is not None and header[0] == SAMPLE_RATE and header[1] == 1 and header[2] >= 0:
            # Habla's own format: keep the bytes as they are.
            frames = header[2]
            if frames == 0:
                raise AudioError("empty audio (0 samples)")
            duration = frames / SAMPLE_RATE
            if duration > max_seconds:
                raise AudioError(f"audio too long ({duration:.1f} s > {max_seconds:.0f} s)")
            return data, duration, SAMPLE_RATE, 1
        info = probe(data)
        if info.frames == 0:
            raise AudioError("empty audio (0 samples)")
        if info.duration > max_seconds:
            raise AudioError(f"audio too long ({info.duration:.1f} s > {max_seconds:.0f} s)")
        if info.channels > 2:
            # More than two channels is a multi-microphone array, not a recording of one voice.
            raise AudioError(f"{info.channels} channels (only mono or stereo is accepted)")
        samples = decode(data)
        if len(samples) == 0:
            raise AudioError("empty audio (0 samples)")
        return encode_wav(samples), len(samples) / SAMPLE_RATE, info.sample_rate, info.channels

    def add_bytes(self, data: bytes) -> ArchivedClip:
        """Checks and stores one clip (AudioError with a one-line reason if unusable)."""
        sha = sha256_bytes(data)
        target = self.path_for(sha)
        stored, duration, rate, channels = self.check(data)
        if target.is_file():
            return ArchivedClip(sha, target, duration, rate, channels, stored is not data, already_there=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(stored)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        return ArchivedClip(sha, target, duration, rate, channels, stored is not data, already_there=False)

    def add_file(self, source: str | Path) -> ArchivedClip:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise AudioError(f"unreadable file ({exc.strerror or exc.__class__.__name__})") from exc
        return self.add_bytes(data)

    def relative_root(self, document_root: Path) -> str:
        """The archive dir's path below the document root: what every task's audio URL starts with."""
        return PurePosixPath(self.relative_path("0" * 64, document_root)).parent.parent.as_posix()

    def relative_path(self, sha256: str, document_root: Path) -> str:
        """The archived file's path relative to Label Studio's document root (for ``?d=`` URLs)."""
        path = self.path_for(sha256).resolve()
        try:
            return path.relative_to(document_root.resolve()).as_posix()
        except ValueError:
            raise ValueError(
                f"the archive {self.root} is not below Label Studio's document root {document_root}: set "
                "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT to a dir containing HABLA_LS_HOME (the same on both)"
            ) from None
