"""Which synthetic voices may teach a model and which are kept to judge it.

A model learns the voice family it trains on (DESIGN.md: fine-tuned on espeak-ng clips, it looked better
on espeak-ng regression clips while getting worse on natural voices). So every place where habla-ls
itself generates *training* audio (the demo's recordings, the benchmarks' corpora, the replay set)
speaks only with :data:`TRAINING_VOICES`, and the standard-Spanish regression set speaks only with
:data:`HELD_OUT_VOICES`: the gate then judges standard speech on voices no candidate has heard.

Voice names in manifests are ``"<family>:<voice>"`` (``speaker`` column of a regression or replay
manifest), so reports and the gate can slice by family and by voice. A user's own manifest may use
any speaker names; rows without a family prefix form the family :data:`USER_FAMILY`.

A Kokoro voice may be a blend of several voices, written ``"jf_alpha+jf_tebukuro"`` (the mean of their
style vectors, :meth:`synth.kokoro.Kokoro.style`) or with weights, ``"jf_alpha*0.7+jf_tebukuro*0.3"``
(:func:`mixed_voice`). A blend counts as held out as soon as one of its parts is, so no blend carries a
held-out voice into training audio. (espeak-ng's ``"es+f3"`` is one voice with a variant, not a blend.)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

import numpy as np

KOKORO = "kokoro"
ESPEAK = "espeak"
USER_FAMILY = "recorded"
FAMILIES = (KOKORO, ESPEAK)

BLEND = "+"
WEIGHT = "*"

# Kokoro's package ships five voices; two are never used for training audio (one of them the only male).
# The three pairwise blends of the training voices add speakers that whisper-base understands as well as
# their parts (normalised WER on 10 everyday sentences, beam 5: parts 0.090-0.112, blends 0.067-0.101).
TRAINING_VOICES: dict[str, tuple[str, ...]] = {
    KOKORO: (
        "jf_alpha", "jf_gongitsune", "jf_tebukuro",
        "jf_alpha+jf_gongitsune", "jf_alpha+jf_tebukuro", "jf_gongitsune+jf_tebukuro",
    ),
    ESPEAK: ("es", "es+f3"),
}
# With the 54 packs of Kokoro v1.0 installed (synth.voice_packs, `make kokoro-voices`), training
# audio can have male voices too: the six above's female half, Spanish ef_dora, and six male voices from
# 84 to 139 Hz (median F0 on four classroom sentences; the held-out jm_kumo speaks at 89 Hz). whisper-base
# WER on those four sentences, standard Spanish, beam 5: 0.000-0.081 for each of the seven added voices.
# Measured on bench/quality (seed 0): no better than the six voices above (bench/README.md), so it is not the default.
MORE_TRAINING_VOICES: dict[str, tuple[str, ...]] = {
    KOKORO: (
        "jf_alpha", "jf_gongitsune", "jf_tebukuro", "ef_dora", "jf_alpha+jf_tebukuro", "jf_gongitsune+jf_tebukuro",
        "em_alex", "em_santa", "am_onyx", "im_nicola", "am_adam", "bm_george",
    ),
}
HELD_OUT_VOICES: dict[str, tuple[str, ...]] = {
    KOKORO: ("jf_nezumi", "jm_kumo"),
    ESPEAK: ("es-419", "es+m3"),
}


def speaker_label(family: str, voice: str) -> str:
    """The ``speaker`` value of a synthetic clip: ``kokoro:jm_kumo``."""
    return f"{family}:{voice}"


def family_of(speaker: str) -> str:
    """The voice family of a manifest ``speaker`` (``USER_FAMILY`` when it names none)."""
    family, sep, _ = str(speaker).partition(":")
    return family if sep and family in FAMILIES else USER_FAMILY


def voice_parts(family: str, voice: str) -> tuple[str, ...]:
    """The voices a (possibly blended, possibly weighted) voice is made of: ``("jf_alpha", "jf_tebukuro")``."""
    if family == KOKORO:
        # Names only: a held-out check must not depend on whether the weights would parse (any speaker
        # name of a user's manifest goes through here).
        return tuple(part.partition(WEIGHT)[0].strip() for part in voice.split(BLEND))
    return (voice,)


def blend_weights(voice: str) -> tuple[tuple[str, float], ...]:
    """A Kokoro voice's parts with their weights (summing to 1): ``"a*3+b"`` is ``(("a", 0.75), ("b", 0.25))``.

    A part without a weight weighs 1 before the weights are scaled to sum to 1, so ``"a+b"`` is the mean.
    ValueError for a weight that is not a positive number.
    """
    parts = []
    for part in voice.split(BLEND):
        name, sep, weight = part.strip().partition(WEIGHT)
        try:
            value = float(weight) if sep else 1.0
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"the weight of {name.strip()!r} in {voice!r} must be a positive number, not {weight!r}")
        parts.append((name.strip(), value))
    total = sum(weight for _name, weight in parts)
    return tuple((name, weight / total) for name, weight in parts)


def mixed_voice(voices: Sequence[str], key: str, *, concentration: float = 1.0) -> str:
    """A Kokoro voice of its own for ``key``: ``voices`` blended with random weights (a Dirichlet draw).

    The same ``key`` always gives the same blend, so a corpus re-made with the same keys reuses its
    clips. Every clip of a training set spoken by its own blend gives the model hundreds of speakers
    between the shipped ones instead of a handful. ``voices`` may be blends themselves; their parts are
    what gets mixed.
    """
    parts = sorted({part for voice in voices for part in voice_parts(KOKORO, voice)})
    if len(parts) < 2:
        raise ValueError(f"a mix needs at least two voices, got {', '.join(parts) or 'none'}")
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    weights = np.random.default_rng(seed).dirichlet([concentration] * len(parts))
    # Two decimals name the voice; a part that rounds to nothing is left out.
    named = [(part, round(float(w), 2)) for part, w in zip(parts, weights, strict=True)]
    kept = [(part, w) for part, w in named if w > 0]
    if len(kept) == 1:
        return kept[0][0]  # a draw that leaves one voice is that voice, not a one-part "blend"
    return BLEND.join(f"{part}{WEIGHT}{w:.2f}" for part, w in kept)


def is_held_out(family: str, voice: str) -> bool:
    """Whether ``voice`` is, or blends in, a voice kept for the regression set."""
    held_out = HELD_OUT_VOICES.get(family, ())
    return voice in held_out or any(part in held_out for part in voice_parts(family, voice))


def speaker_is_held_out(speaker: str) -> bool:
    """``is_held_out`` for a manifest ``speaker``; a bare voice name (older corpora) is checked in every family."""
    family, sep, voice = str(speaker).partition(":")
    if sep and family in FAMILIES:
        return is_held_out(family, voice)
    return any(is_held_out(name, str(speaker)) for name in FAMILIES)


def check_training_voices(family: str, voices: Iterable[str]) -> tuple[str, ...]:
    """``voices`` unchanged, or ValueError naming the held-out ones (they must never make training audio)."""
    voices = tuple(voices)
    banned = [voice for voice in voices if is_held_out(family, voice)]
    if banned:
        raise ValueError(
            f"{', '.join(banned)}: held out for the standard-Spanish regression set (synth/voices.py); "
            f"training audio may use {', '.join(training_voices(family))}"
        )
    return voices


def training_voices(family: str) -> tuple[str, ...]:
    try:
        return TRAINING_VOICES[family]
    except KeyError:
        raise ValueError(f"unknown voice family {family!r}; known: {', '.join(FAMILIES)}") from None


def held_out_voices(family: str) -> tuple[str, ...]:
    try:
        return HELD_OUT_VOICES[family]
    except KeyError:
        raise ValueError(f"unknown voice family {family!r}; known: {', '.join(FAMILIES)}") from None
