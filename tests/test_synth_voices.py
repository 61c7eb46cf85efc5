"""Which synthetic voices may make training audio and which are kept to judge standard speech."""

from __future__ import annotations

import pytest

from synth.voices import (
    ESPEAK,
    HELD_OUT_VOICES,
    KOKORO,
    TRAINING_VOICES,
    USER_FAMILY,
    blend_weights,
    check_training_voices,
    family_of,
    is_held_out,
    mixed_voice,
    speaker_is_held_out,
    speaker_label,
    voice_parts,
)


def test_training_and_held_out_voices_are_disjoint_and_blends_only_mix_training_voices() -> None:
    for family in (KOKORO, ESPEAK):
        assert len(HELD_OUT_VOICES[family]) >= 2
        assert not set(TRAINING_VOICES[family]) & set(HELD_OUT_VOICES[family])
        for voice in TRAINING_VOICES[family]:
            assert not is_held_out(family, voice)
            assert all(part in TRAINING_VOICES[family] for part in voice_parts(family, voice))
    assert any("+" in voice for voice in TRAINING_VOICES[KOKORO])  # blends make more training speakers


def test_a_blend_with_one_held_out_part_is_held_out() -> None:
    assert voice_parts(KOKORO, "jf_alpha+jm_kumo") == ("jf_alpha", "jm_kumo")
    assert is_held_out(KOKORO, "jf_alpha+jm_kumo") and is_held_out(KOKORO, "jm_kumo")
    assert not is_held_out(KOKORO, "jf_alpha+jf_tebukuro")
    # espeak-ng's "+" is a variant of one voice, not a blend
    assert voice_parts(ESPEAK, "es+f3") == ("es+f3",)
    assert is_held_out(ESPEAK, "es+m3") and not is_held_out(ESPEAK, "es+f3")
    with pytest.raises(ValueError, match="jf_tebukuro\\+jm_kumo: held out for the standard-Spanish regression set"):
        check_training_voices(KOKORO, ["jf_alpha", "jf_tebukuro+jm_kumo"])
    assert check_training_voices(KOKORO, ["jf_alpha+jf_gongitsune"]) == ("jf_alpha+jf_gongitsune",)


def test_speaker_labels_name_family_and_voice() -> None:
    assert speaker_label(KOKORO, "jm_kumo") == "kokoro:jm_kumo"
    assert family_of("kokoro:jm_kumo") == KOKORO and family_of("espeak:es-419") == ESPEAK
    assert family_of("maria") == USER_FAMILY and family_of("aula:maria") == USER_FAMILY
    assert speaker_is_held_out("kokoro:jm_kumo") and speaker_is_held_out("es-419")  # older corpora: bare names
    assert not speaker_is_held_out("kokoro:jf_alpha") and not speaker_is_held_out("maria")


def test_weighted_blends_name_their_parts_and_weights() -> None:
    assert blend_weights("jf_alpha+jf_tebukuro") == (("jf_alpha", 0.5), ("jf_tebukuro", 0.5))
    assert blend_weights("jf_alpha*3+jf_tebukuro") == (("jf_alpha", 0.75), ("jf_tebukuro", 0.25))
    assert voice_parts(KOKORO, "jf_alpha*0.7+jm_kumo*0.3") == ("jf_alpha", "jm_kumo")
    assert is_held_out(KOKORO, "jf_alpha*0.99+jm_kumo*0.01")  # any share of a held-out voice
    # a speaker name that only looks like a weighted blend is a name, not an error
    assert is_held_out(KOKORO, "jm_kumo*x") and not speaker_is_held_out("teacher*2") and not speaker_is_held_out("aula*")
    for bad in ("jf_alpha*0+jf_tebukuro", "jf_alpha*-1+jf_tebukuro", "jf_alpha*x+jf_tebukuro", "jf_alpha*inf+jf_tebukuro"):
        with pytest.raises(ValueError, match="must be a positive number"):
            blend_weights(bad)


def test_a_mixed_voice_is_fixed_by_its_key_and_only_mixes_training_voices() -> None:
    voices = TRAINING_VOICES[KOKORO]
    mixes = [mixed_voice(voices, f"train:A{i:03d}:0") for i in range(50)]
    assert mixes == [mixed_voice(voices, f"train:A{i:03d}:0") for i in range(50)]  # same key, same voice
    assert len(set(mixes)) == 50  # a speaker of its own for every clip
    for mix in mixes:
        check_training_voices(KOKORO, [mix])
        weights = dict(blend_weights(mix))
        assert set(weights) <= {"jf_alpha", "jf_gongitsune", "jf_tebukuro"} and abs(sum(weights.values()) - 1) < 1e-9
    # the draws spread over the triangle, not near its middle only
    top = [max(dict(blend_weights(mix)).values()) for mix in mixes]
    assert min(top) < 0.5 and max(top) > 0.8
    with pytest.raises(ValueError, match="at least two voices"):
        mixed_voice(["jf_alpha"], "k")
    # a draw so lopsided that one voice keeps every rounded weight names that voice alone
    lopsided = [mixed_voice(voices, f"k{i}", concentration=0.02) for i in range(200)]
    assert any(mix in ("jf_alpha", "jf_gongitsune", "jf_tebukuro") for mix in lopsided)
