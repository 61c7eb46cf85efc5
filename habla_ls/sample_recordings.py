"""Writes a Habla recordings dir from sentences: for tests, the demo and benchmarks.

The layout and the JSON files are the ones Habla's own code writes (XRMechSolutions/HablaTranslate;
field by field in sync/habla.py)::

    <root>/<name>_<YYYYmmdd>_<HHMMSS>/segment_NNN.wav      16 kHz mono s16, a little silence around speech
        metadata.json                the recorder's, written when the session stops (live transcript in
                                     raw_transcript, the translator's confidence, speaker label)
        ground_truth.json            optional: tools/generate_ground_truth.py's (confidence 0: WhisperX
                                     reports no log-probability)
        corrected_ground_truth.json  optional: what the corrections page saves, first half reviewed

The last session can be left *live* (WAVs only). ``text_rewrite`` changes what is *spoken* (e.g. an
accent simulator) while the returned references keep the standard spelling; Habla's live transcript
is modelled as what was spoken, which is what a weak recogniser tends to write.

Voices: :func:`kokoro_synthesizer` (natural Kokoro voices; the accent is applied to their phonemes, so it
reads the standard spelling: pass ``speak_reference=True``) or :func:`espeak_synthesizer` (robotic
espeak-ng reading a respelling: fast, for tests). Both speak only with the *training* voices of
:mod:`synth.voices`: the held-out ones are kept for the regression set.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ml_backend.audio import SAMPLE_RATE, encode_wav

DEFAULT_SENTENCES = (
    "Buenos días a todos, vamos a empezar la clase.",
    "Abrid el libro por la página treinta y dos.",
    "¿Quién ha terminado los deberes de ayer?",
    "Hoy vamos a hablar de los verbos irregulares.",
    "Por favor, escribid la fecha en la pizarra.",
    "Los niños de la segunda fila están muy callados.",
    "¿Puedes repetir la pregunta más despacio?",
    "Mañana tenemos un examen de matemáticas.",
    "Cerrad las ventanas, que hace mucho frío.",
    "Muy bien, ahora leed el texto en voz alta.",
    "La capital de Andalucía es Sevilla.",
    "Guardad los cuadernos y salid al recreo.",
)

Synthesizer = Callable[[str, str], np.ndarray]  # (text, speaker) -> 16 kHz mono float32


@dataclass(frozen=True)
class SampleSegment:
    key: str
    path: Path
    speaker: str
    reference: str  # standard spelling: what a careful human would write
    spoken: str  # what the synthesizer said (after text_rewrite)
    duration: float


@dataclass
class SampleRecordings:
    root: Path
    sessions: list[str] = field(default_factory=list)
    live_sessions: list[str] = field(default_factory=list)
    segments: list[SampleSegment] = field(default_factory=list)

    @property
    def references(self) -> dict[str, str]:
        return {s.key: s.reference for s in self.segments}


def _speaker_voices(family: str, speakers: Sequence[str], voices: Mapping[str, str] | None) -> dict[str, str]:
    from synth.voices import check_training_voices, training_voices

    pool = training_voices(family)
    chosen = dict(voices) if voices else {name: pool[i % len(pool)] for i, name in enumerate(speakers)}
    check_training_voices(family, chosen.values())
    return chosen


def _gains(speakers: Iterable[str], quiet_speakers: Sequence[str], quiet_gain_db: float) -> dict[str, np.float32]:
    return {name: np.float32(10 ** (quiet_gain_db / 20) if name in quiet_speakers else 1.0) for name in speakers}


def espeak_synthesizer(
    speakers: Sequence[str],
    quiet_speakers: Sequence[str] = (),
    quiet_gain_db: float = -20.0,
    *,
    voices: Mapping[str, str] | None = None,
) -> Synthesizer:
    """One espeak-ng training voice per speaker (``voices`` maps speaker -> voice); quiet speakers are attenuated."""
    from dataclasses import replace

    from synth.espeak import VOICES, synthesize
    from synth.voices import ESPEAK

    by_name = {voice.voice: voice for voice in VOICES}
    chosen = _speaker_voices(ESPEAK, speakers, voices)
    settings = {
        name: replace(by_name[voice], gain_db=quiet_gain_db if name in quiet_speakers else 0.0)
        for name, voice in chosen.items()
    }
    default = by_name[chosen[speakers[0]]] if speakers else VOICES[0]
    return lambda text, speaker: synthesize(text, settings.get(speaker, default))


def kokoro_synthesizer(
    speakers: Sequence[str],
    quiet_speakers: Sequence[str] = (),
    quiet_gain_db: float = -20.0,
    *,
    voices: Mapping[str, str] | None = None,
    rules: str | Sequence[str] | None = "andalusian",
    intensity: float = 1.0,
) -> Synthesizer:
    """One natural Kokoro training voice per speaker, reading the *standard spelling* with the accent
    ``rules`` applied to its espeak-ng phonemes (None: standard Spanish); quiet speakers are attenuated.

    Use with ``write_sample_recordings(..., speak_reference=True)``. Raises
    :class:`~synth.kokoro.KokoroUnavailable` when the synth extra is missing or broken.
    """
    from synth.accent import accent_ipa
    from synth.kokoro import load_kokoro, phonemize
    from synth.voices import KOKORO

    chosen = _speaker_voices(KOKORO, speakers, voices)
    kokoro = load_kokoro()
    unknown = [voice for voice in chosen.values() if not kokoro.has_voice(voice)]
    if unknown:
        raise ValueError(f"unknown Kokoro voice(s) {', '.join(unknown)}; available: {', '.join(kokoro.voices)}")
    gains = _gains(chosen, quiet_speakers, quiet_gain_db)
    default = chosen[speakers[0]] if speakers else kokoro.voices[0]

    def speak(text: str, speaker: str) -> np.ndarray:
        ipa = phonemize(text)
        if rules:
            # Seeded by the sentence, like the demo's respelling, so a re-run says the same thing.
            ipa = accent_ipa(ipa, rules, intensity=intensity, seed=text).text
        audio = kokoro.speak_phonemes(ipa, chosen.get(speaker, default)).audio
        return np.clip(audio * gains.get(speaker, np.float32(1.0)), -1.0, 1.0).astype(np.float32)

    return speak


def _pad(samples: np.ndarray, seconds: float = 0.2) -> np.ndarray:
    silence = np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)
    return np.concatenate([silence, samples.astype(np.float32), silence])


def _write_json(path: Path, data: dict, *, ensure_ascii: bool = False) -> None:
    # Habla's writers use json.dump(indent=2) without a final newline; only the recorder escapes non-ASCII.
    path.write_text(json.dumps(data, ensure_ascii=ensure_ascii, indent=2), encoding="utf-8")


def write_sample_recordings(
    root: str | Path,
    *,
    sentences: Sequence[str] = DEFAULT_SENTENCES,
    sessions: int = 2,
    segments_per_session: int | None = None,
    session_name: str = "clase",
    speakers: Sequence[str] = ("profesora", "alumno"),
    quiet_speakers: Sequence[str] = (),
    quiet_gain_db: float = -20.0,
    ground_truth: bool = True,
    corrected: bool = False,
    live_session: bool = True,
    text_rewrite: Callable[[str], str] | None = None,
    synthesize: Synthesizer | None = None,
    speak_reference: bool = False,
    start: datetime = datetime(2025, 3, 3, 9, 0, 0),
    progress: bool = False,
) -> SampleRecordings:
    """Writes ``sessions`` sessions (the last one live if ``live_session``) cycling through ``sentences``.

    ``segments_per_session`` defaults to spreading the sentences evenly over the sessions.
    ``speak_reference``: the synthesiser is given the standard spelling and makes the accent itself
    (:func:`kokoro_synthesizer`); ``text_rewrite`` then only writes Habla's live transcript.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    synthesize = synthesize or espeak_synthesizer(speakers, quiet_speakers, quiet_gain_db)
    per_session = segments_per_session or max(1, -(-len(sentences) // max(1, sessions)))
    out = SampleRecordings(root=root)
    sentence_index = 0
    # disable=None: no bar when the output is not a terminal (logs, CI).
    bar = tqdm(total=sessions * per_session, desc="recordings", unit="clip", disable=None if progress else True)
    for s in range(sessions):
        started = start + timedelta(days=s)
        name = f"{session_name}_{started:%Y%m%d_%H%M%S}"
        session_dir = root / name
        session_dir.mkdir(parents=True, exist_ok=True)
        is_live = live_session and s == sessions - 1
        meta_segments, truth_segments = [], []
        offset = 0.0
        for n in range(1, per_session + 1):
            reference = sentences[sentence_index % len(sentences)]
            sentence_index += 1
            speaker = speakers[(n - 1) % len(speakers)]
            spoken = text_rewrite(reference) if text_rewrite else reference
            samples = _pad(synthesize(reference if speak_reference else spoken, speaker))
            bar.update()
            filename = f"segment_{n:03d}.wav"
            (session_dir / filename).write_bytes(encode_wav(samples))
            duration = round(len(samples) / SAMPLE_RATE, 3)
            out.segments.append(SampleSegment(f"{name}/{filename}", session_dir / filename, speaker, reference, spoken, duration))
            meta_segments.append(
                {
                    "segment_id": n,
                    "filename": filename,
                    "size_bytes": len(samples) * 2,
                    "duration_seconds": duration,
                    "recorded_at": (started + timedelta(seconds=offset + duration)).isoformat(),
                    "raw_transcript": spoken,
                    "translation": "",
                    "speaker": speaker,
                    "confidence": round(0.95 - 0.05 * (n % 5), 2),  # the translator's confidence
                    "idioms_detected": 0,
                }
            )
            truth_segments.append(
                {
                    "segment_id": n,
                    "filename": filename,
                    "transcript": spoken,
                    "confidence": 0,
                    "asr_time_seconds": round(0.3 * duration, 2),
                    "translation": "",
                    "asr_corrections": "",
                }
            )
            offset += duration
        out.sessions.append(name)
        if is_live:
            out.live_sessions.append(name)
            continue
        _write_json(
            session_dir / "metadata.json",
            {
                "session_id": session_name,
                "started_at": started.isoformat(),
                "raw_audio_format": "webm_opus",
                "sample_rate": SAMPLE_RATE,
                "segments": meta_segments,
                "ended_at": (started + timedelta(seconds=offset)).isoformat(),
                "total_segments": len(meta_segments),
            },
            ensure_ascii=True,
        )
        header = {
            "generated_at": (started + timedelta(hours=1)).isoformat(),
            "whisper_model": "large-v3",
            "direction": "es_to_en",
            "total_segments": len(truth_segments),
        }
        if ground_truth:
            _write_json(
                session_dir / "ground_truth.json",
                {
                    **header,
                    "segments": truth_segments,
                    "full_transcript": "\n".join(f"[{e['segment_id']}] {e['transcript']}" for e in truth_segments),
                    "full_translation": "\n".join(e["translation"] for e in truth_segments),
                },
            )
        if corrected:
            reviewed = []
            for i, entry in enumerate(truth_segments):
                done = i < len(truth_segments) // 2
                segment = out.segments[-len(truth_segments) + i]
                reviewed.append(
                    {
                        **entry,
                        "transcript": segment.reference if done else entry["transcript"],
                        "reviewed": done,
                        "human_corrected": done and segment.reference != entry["transcript"],
                    }
                )
            _write_json(
                session_dir / "corrected_ground_truth.json",
                {
                    **header,
                    "segments": reviewed,
                    "corrected_at": (started + timedelta(hours=2)).replace(tzinfo=UTC).isoformat(),
                    "correction_stats": {
                        "reviewed": sum(e["reviewed"] for e in reviewed),
                        "human_corrected": sum(e["human_corrected"] for e in reviewed),
                        "total": len(reviewed),
                    },
                },
            )
    bar.close()
    return out
