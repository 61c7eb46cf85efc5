"""How clips are decoded and what is checked of a decoded text: :class:`DecodeOptions` (the reference
Whisper decoder's settings, from the environment or given), Whisper's repetition measure, the no-speech
rule, the hallucination flag, and the checks a clip's share of a packed window must pass."""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

# Thresholds of the reference Whisper decoder (openai/whisper, faster-whisper).
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
# A packed clip with fewer words than this per second of its audio lost words to its window-mates.
# Habla's VAD segments hold speech (Spanish runs at 2-3 words/s); a slow "sí... vale" still passes.
MIN_PACKED_WORDS_PER_SECOND = 0.5


@dataclass(frozen=True)
class DecodeOptions:
    """How clips are decoded; the defaults are the reference decoder's, with the language forced."""

    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    max_new_tokens: int | None = None  # per clip (a packed window gets this much per clip); None: Whisper's limit
    pack: bool = True  # several short clips per 30-s window (faster-whisper only)
    pack_gap_seconds: float = 1.0  # silence between packed clips
    pack_max_clip_seconds: float = 10.0  # longer clips get a window of their own
    compression_ratio_threshold: float = COMPRESSION_RATIO_THRESHOLD
    log_prob_threshold: float = LOG_PROB_THRESHOLD
    no_speech_threshold: float = NO_SPEECH_THRESHOLD


def decode_options_from_env(environ: Mapping[str, str] | None = None, *, pack_default: bool = True) -> DecodeOptions:
    """Decoding settings from HABLA_LS_TEMPERATURES / HABLA_LS_MAX_NEW_TOKENS / HABLA_LS_PACK, so the
    backend, the active-learning round and evaluation decode the same way in one environment."""
    env = os.environ if environ is None else environ
    defaults = DecodeOptions()
    temperatures = env.get("HABLA_LS_TEMPERATURES")
    max_new_tokens = env.get("HABLA_LS_MAX_NEW_TOKENS")
    pack = env.get("HABLA_LS_PACK")
    return DecodeOptions(
        temperatures=tuple(float(t) for t in temperatures.split(",")) if temperatures else defaults.temperatures,
        max_new_tokens=int(max_new_tokens) if max_new_tokens else None,
        pack=pack_default if not pack else pack.lower() not in ("0", "false", "no"),
    )


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: raw bytes / zlib bytes (> 2.4 means the text loops)."""
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


def is_likely_hallucination(
    text: str, avg_logprob: float, no_speech_prob: float, ratio: float, options: DecodeOptions
) -> bool:
    if not text.strip():
        return False
    if ratio > options.compression_ratio_threshold:
        return True
    return meets_no_speech_rule(avg_logprob, no_speech_prob, options)


def meets_no_speech_rule(avg_logprob: float, no_speech_prob: float, options: DecodeOptions) -> bool:
    """The reference decoder's silence test: the model thinks there is no speech AND is unsure of its words.

    The reference decoder drops such a window's text; here it only lowers the confidence (Habla's
    segments come from its VAD, so a blank would be speech dropped without anyone looking).
    """
    return no_speech_prob > options.no_speech_threshold and avg_logprob < options.log_prob_threshold


def packed_clip_problem(text: str, avg_logprob: float, words: int, seconds: float, options: DecodeOptions) -> str | None:
    """Why a clip's share of a packed window cannot be trusted (it is then decoded alone), or None.

    The checks are the reference decoder's for a window of its own, plus one for words lost to the
    window-mates: no words at all, fewer than MIN_PACKED_WORDS_PER_SECOND per second of audio, a mean
    token log-probability under the log-prob threshold (where the reference decoder would fall back to
    sampling: low-confidence words are the ones a neighbour's context sways), or a looping text.
    """
    if words == 0 or not text.strip():
        return "no words"
    if words < MIN_PACKED_WORDS_PER_SECOND * seconds:
        return f"{words} words in {seconds:.1f} s"
    if avg_logprob < options.log_prob_threshold:
        return f"log-prob {avg_logprob:.2f}"
    if compression_ratio(text) > options.compression_ratio_threshold:
        return "repetitive"
    return None
