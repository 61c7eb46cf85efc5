"""Which synthetic voices may teach a model and which are kept to judge it.

A model learns the voice family it trains on (DESIGN.md: fine-tuned on espeak-ng clips, it looked better
on espeak-ng regression clips while getting worse on natural voices). So every place where habla-ls
itself generates *training* audio (the demo's recordings, the benchmarks' corpora, the replay set)
speaks only with :data:`TRAINING_VOICES`, and the standard-Spanish regression set speaks only with
:data:`HELD_OUT_VOICES`: the gate then judges standard speech on voices no candidate has heard.

Voice names in manifests are ``"<family>:<voice>"`` (``speaker`` column of a regression or replay
manifest), so reports and the gate can slice by family and by voice. A user's own manifest may use
any speaker names; rows without a family prefix form the family :data:`USER_FAMILY`.
"""

from __future__ import annotations

KOKORO = "kokoro"
ESPEAK = "espeak"
USER_FAMILY = "recorded"
FAMILIES = (KOKORO, ESPEAK)

# Kokoro's package ships five voices; two are never used for training audio (one of them the only male).
TRAINING_VOICES: dict[str, tuple[str, ...]] = {
    KOKORO: ("jf_alpha", "jf_gongitsune", "jf_tebukuro"),
    ESPEAK: ("es", "es+f3"),
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


def is_held_out(family: str, voice: str) -> bool:
    return voice in HELD_OUT_VOICES.get(family, ())


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
