"""A labelled corpus of synthetic Spanish: sentences x voices x {standard, accented} -> WAVs + manifest.

The manifest is the project's dataset manifest (:mod:`sync.manifest`): ``audio_path`` (absolute),
``transcript`` (the sentence in standard spelling, whatever was spoken), ``duration``, ``speaker``
(``"<backend>:<voice>"``, as in :mod:`synth.voices`), ``session`` and ``notes`` (the
backend, and which accent rules changed the clip, with what was actually spoken), so training and
evaluation read it like pulled annotations.

Sessions group a voice's clips in runs of ``group_size`` sentences: training splits by session, and
this keeps a split from being one voice or from cutting every sentence group apart.

File names hold a digest of what was spoken and by whom, so a re-run reuses every clip that would
come out the same and re-synthesises only what changed (rules, intensity, voice, speed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from ml_backend.audio import SAMPLE_RATE, AudioError, encode_wav, probe
from sync.manifest import MANIFEST_JSONL, ManifestRow, write_manifest
from synth.accent import ANDALUSIAN, accent_ipa, resolve_rules, respell
from synth.sentences import Sentence
from synth.voices import BLEND, WEIGHT, mixed_voice, speaker_label

log = logging.getLogger(__name__)

STANDARD = "standard"
ACCENTED = "accented"


@dataclass(frozen=True)
class AccentSettings:
    rules: tuple[str, ...] = ANDALUSIAN
    intensity: float | Mapping[str, float] = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", resolve_rules(self.rules))

    def describe(self) -> str:
        intensity = (
            ",".join(f"{k}={v:g}" for k, v in sorted(self.intensity.items()))
            if isinstance(self.intensity, Mapping) else f"{self.intensity:g}"
        )
        return f"{'+'.join(self.rules)}@{intensity}"


@dataclass(frozen=True)
class Rendered:
    audio: np.ndarray  # 16 kHz mono float32
    spoken: str  # the IPA or respelling that was synthesised
    applied: tuple[str, ...]  # accent rules that changed it


class SpeechBackend(Protocol):
    name: str

    @property
    def voices(self) -> tuple[str, ...]: ...

    def has_voice(self, voice: str) -> bool: ...

    def spoken_form(self, text: str, accent: AccentSettings | None, seed: str) -> tuple[str, tuple[str, ...]]:
        """What will be spoken (cheap, no audio) and the accent rules that changed it."""
        ...

    def render(self, spoken: str, voice: str) -> np.ndarray: ...


class KokoroBackend:
    """Kokoro reads IPA: the accent is applied to espeak-ng's phonemes."""

    name = "kokoro"

    def __init__(self, speed: float = 1.0):
        from synth.kokoro import load_kokoro

        self.speed = speed
        self._kokoro = load_kokoro()

    @property
    def voices(self) -> tuple[str, ...]:
        return self._kokoro.voices

    def has_voice(self, voice: str) -> bool:
        return self._kokoro.has_voice(voice)

    def spoken_form(self, text: str, accent: AccentSettings | None, seed: str) -> tuple[str, tuple[str, ...]]:
        from synth.kokoro import phonemize

        ipa = phonemize(text)
        if accent is None:
            return ipa, ()
        result = accent_ipa(ipa, accent.rules, intensity=accent.intensity, seed=seed)
        return result.text, result.applied

    def render(self, spoken: str, voice: str) -> np.ndarray:
        return self._kokoro.speak_phonemes(spoken, voice, speed=self.speed).audio


class EspeakBackend:
    """espeak-ng reads text: the accent is a respelling. Robotic, but fast (tests, the demo)."""

    name = "espeak"

    def __init__(self) -> None:
        from synth import espeak

        self._espeak = espeak
        self._voices = {voice.voice: voice for voice in espeak.VOICES}

    @property
    def voices(self) -> tuple[str, ...]:
        return tuple(self._voices)

    def has_voice(self, voice: str) -> bool:
        return voice in self._voices

    def spoken_form(self, text: str, accent: AccentSettings | None, seed: str) -> tuple[str, tuple[str, ...]]:
        if accent is None:
            return text, ()
        result = respell(text, accent.rules, intensity=accent.intensity, seed=seed)
        return result.text, result.applied

    def render(self, spoken: str, voice: str) -> np.ndarray:
        if voice not in self._voices:
            raise ValueError(f"unknown espeak voice {voice!r}; available: {', '.join(self._voices)}")
        return self._espeak.synthesize(spoken, self._voices[voice])


BACKENDS = {"kokoro": KokoroBackend, "espeak": EspeakBackend}


def make_backend(name: str) -> SpeechBackend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError(f"unknown speech backend {name!r}; known: {', '.join(BACKENDS)}") from None


@dataclass(frozen=True)
class ClipPlan:
    sentence: Sentence
    voice: str
    accented: bool
    session: str


def plan_clips(
    sentences: Sequence[Sentence],
    voices: Sequence[str],
    *,
    accented: bool,
    name: str,
    voices_per_sentence: int = 1,
    group_size: int = 10,
    limit: int | None = None,
    first_voice: int = 0,
    mix: bool = False,
) -> list[ClipPlan]:
    """Each sentence spoken by ``voices_per_sentence`` different voices, rotating so every voice gets
    about as many clips; at most ``limit`` clips (whole sentences are kept together).

    ``mix``: every clip gets a Kokoro voice of its own instead, a random blend of ``voices``' parts
    (:func:`synth.voices.mixed_voice`, fixed by the set's name and the sentence).
    """
    if not voices:
        raise ValueError("no voices to speak with")
    if not 1 <= voices_per_sentence <= len(voices):
        raise ValueError(f"voices_per_sentence must be between 1 and {len(voices)} (the number of voices)")
    plans = []
    for index, sentence in enumerate(sentences):
        if limit is not None and len(plans) + voices_per_sentence > limit:
            break
        for k in range(voices_per_sentence):
            if mix:
                voice = mixed_voice(voices, f"{name}:{sentence.id}:{k}")
                session = f"{name}-mix-g{index // group_size:02d}"
            else:
                voice = voices[(first_voice + index * voices_per_sentence + k) % len(voices)]
                session = f"{name}-{voice}-g{index // group_size:02d}"
            plans.append(ClipPlan(sentence, voice, accented, session))
    return plans


@dataclass
class CorpusResult:
    manifest_path: Path
    rows: list[ManifestRow]
    synthesised: int = 0
    reused: int = 0
    failed: list[str] = field(default_factory=list)
    synthesis_seconds: float = 0.0  # wall time spent synthesising (not counting reused clips)
    synthesised_audio_seconds: float = 0.0

    @property
    def audio_seconds(self) -> float:
        return sum(row.duration for row in self.rows)

    @property
    def realtime_factor(self) -> float:
        """Seconds of speech made per second of work (x real time); 0 when nothing was synthesised."""
        return self.synthesised_audio_seconds / self.synthesis_seconds if self.synthesis_seconds else 0.0


def _clip_name(plan: ClipPlan, backend: str, spoken: str, extra: str) -> str:
    digest = hashlib.sha256(f"{backend}\0{plan.voice}\0{spoken}\0{extra}".encode()).hexdigest()[:10]
    kind = ACCENTED if plan.accented else STANDARD
    voice = plan.voice.replace(BLEND, "-").replace(WEIGHT, "")
    return f"{plan.sentence.id}_{voice}_{kind}_{digest}.wav"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def build_corpus(
    out_dir: str | Path,
    plans: Iterable[ClipPlan],
    backend: SpeechBackend,
    *,
    accent: AccentSettings | None = None,
    seed: int | str = 0,
    progress: bool = True,
    description: str = "synthesising",
) -> CorpusResult:
    """Speak every planned clip into ``out_dir/audio/`` and write ``out_dir/manifest.jsonl`` (+ .csv).

    A clip that cannot be made is reported in one line and left out; the others go on.
    """
    out_dir = Path(out_dir).resolve()
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    accent = accent or AccentSettings()
    speed = getattr(backend, "speed", 1.0)
    plans = list(plans)
    result = CorpusResult(manifest_path=out_dir / MANIFEST_JSONL, rows=[])

    for plan in tqdm(plans, desc=description, unit="clip", disable=not progress):
        where = f"{plan.sentence.id} ({plan.voice}, {ACCENTED if plan.accented else STANDARD})"
        clip_seed = f"{seed}:{plan.sentence.id}:{plan.voice}"
        try:
            spoken, applied = backend.spoken_form(plan.sentence.text, accent if plan.accented else None, clip_seed)
            path = audio_dir / _clip_name(plan, backend.name, spoken, f"speed={speed}")
            if path.is_file():
                data = path.read_bytes()
                duration = probe(data).duration
                result.reused += 1
            else:
                started = time.perf_counter()
                audio = backend.render(spoken, plan.voice)
                result.synthesis_seconds += time.perf_counter() - started
                if audio.size == 0 or float(np.max(np.abs(audio))) < 1e-4:
                    raise AudioError("synthesiser returned silence")
                data = encode_wav(audio, SAMPLE_RATE)
                _write_atomically(path, data)
                duration = len(audio) / SAMPLE_RATE
                result.synthesised += 1
                result.synthesised_audio_seconds += duration
        except Exception as exc:  # noqa: BLE001 - one bad clip must not stop the corpus
            message = f"{where}: skipped: {exc}"
            log.warning(message)
            tqdm.write(message)
            result.failed.append(message)
            continue
        notes = f"synthetic {backend.name} voice; " + (
            f"accent {accent.describe()}: {', '.join(applied) or 'no rule applied'}" if plan.accented else "standard"
        ) + f"; spoken: {spoken}"
        result.rows.append(
            ManifestRow(
                audio_path=str(path),
                transcript=plan.sentence.text,
                duration=round(duration, 3),
                speaker=speaker_label(backend.name, plan.voice),
                session=plan.session,
                notes=notes,
                segment_key=f"{plan.session}/{path.name}",
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
    write_manifest(out_dir, result.rows)
    return result
