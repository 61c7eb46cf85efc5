"""The Whisper engine's common part: a loaded model (:class:`Engine`), what it gives for each clip
(:class:`Transcription`), and what ``transcribe`` and ``embed`` do the same way on either runtime
(:mod:`ml_backend.ct2_engine`, :mod:`ml_backend.hf_engine`; :mod:`ml_backend.loading` picks one).

Every clip gets a :class:`Transcription` with a confidence in [0, 1] (the geometric mean of the chosen
tokens' probabilities, i.e. ``exp(avg_logprob)``, lowered further when the model also thinks the clip is
silence), Whisper's no-speech probability, the compression ratio of the text and a hallucination flag,
so that WER, active-learning doubt and prelabels all come from the same decoder.

A clip's transcript depends on the clip, not on the call it came in:

- identical audio (same samples, whatever file or request it came from) is decoded once per call and
  every copy gets that one result;
- the distinct clips are put in a canonical order (longest first, ties by the hash of the samples)
  before anything else, so the same set of clips gives the same texts in any request order;
- a segment is never blanked: when Whisper thinks a clip is silence and is unsure of its words (the
  reference decoder's "no speech" rule) the best text is still returned, with a low confidence and the
  hallucination flag, and the annotator deletes it if it was noise.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ml_backend.decoding import (
    DecodeOptions,
    compression_ratio,
    is_likely_hallucination,
    meets_no_speech_rule,
)
from ml_backend.features import HOP_SAMPLES, WINDOW_FRAMES, log_mel_features

# Models are read from local dirs only: every runtime module imports this one, so neither transformers
# nor huggingface_hub ever reaches for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class EngineError(RuntimeError):
    """The model cannot be loaded or run; ``str()`` names the path and the reason."""


@dataclass(frozen=True)
class Word:
    """One word of a transcript, timed in its clip: what the labelling page marks for checking."""

    text: str  # as decoded, with its leading space and punctuation
    start: float  # seconds from the clip's start
    end: float
    probability: float  # the mean of its tokens' probabilities under the alignment (faster-whisper's)
    tokens: int = 1  # how many tokens spell it (a word the tokenizer had to spell out is rarely a real one)


@dataclass(frozen=True)
class Transcription:
    """What the engine gives for one clip."""

    text: str
    confidence: float  # [0, 1]: exp(mean token log-probability), x (1 - no_speech_prob) under the no-speech rule
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    likely_hallucination: bool
    audio_seconds: float
    elapsed_seconds: float  # this clip's share of the call's wall time (copies of one audio share one decode)
    window_clips: int = 1  # distinct clips that shared its 30-s window (1: decoded alone)
    words: tuple[Word, ...] = ()  # with ``transcribe(words=True)`` on CTranslate2; else empty


def make_transcription(
    text: str, avg_logprob: float, no_speech_prob: float, audio_seconds: float, elapsed: float,
    options: DecodeOptions, window_clips: int = 1, words: tuple[Word, ...] = (),
) -> Transcription:
    """A clip's result from its decoded text and scores, with the checks of :mod:`ml_backend.decoding`."""
    text = text.strip()
    ratio = compression_ratio(text)
    avg_logprob = float(avg_logprob) if math.isfinite(avg_logprob) else -30.0
    confidence = math.exp(min(0.0, avg_logprob))
    if meets_no_speech_rule(avg_logprob, no_speech_prob, options):
        confidence *= 1.0 - no_speech_prob  # below both thresholds' levels: a text to check, likely noise
    return Transcription(
        text=text,
        confidence=float(min(1.0, max(0.0, confidence))),
        avg_logprob=avg_logprob,
        no_speech_prob=float(no_speech_prob),
        compression_ratio=ratio,
        likely_hallucination=is_likely_hallucination(text, avg_logprob, no_speech_prob, ratio, options),
        audio_seconds=audio_seconds,
        elapsed_seconds=elapsed,
        window_clips=window_clips,
        words=words,
    )


def audio_key(clip: np.ndarray) -> str:
    """Identifies a clip by its samples (sha256 of the float32 data): one key per distinct audio."""
    return hashlib.sha256(np.ascontiguousarray(clip, dtype=np.float32).tobytes()).hexdigest()


def _as_clip(clip: np.ndarray, index: int) -> np.ndarray:
    array = np.asarray(clip, dtype=np.float32)
    if array.ndim != 1:
        raise EngineError(f"clip {index}: expected mono samples (1-D), got shape {array.shape}")
    return array


@dataclass
class Engine:
    """A loaded model. Subclasses implement :meth:`_transcribe`; ``transcribe`` is thread-safe."""

    version: str
    model_path: Path
    language: str = "es"
    device: str = "cpu"
    compute_type: str = "float32"
    options: DecodeOptions = field(default_factory=DecodeOptions)
    backend: str = "none"

    def __post_init__(self) -> None:
        # One decode at a time per model: both runtimes already use every core for one batch, and the
        # transformers model is not safe to call from several threads at once.
        self._lock = threading.Lock()

    def transcribe(
        self, clips: Sequence[np.ndarray], *, beam_size: int = 5, options: DecodeOptions | None = None,
        words: bool = False,
    ) -> list[Transcription]:
        """One result per 16 kHz float32 clip, in order; copies of one audio get one (shared) result.

        ``words``: also each word's time and probability (CTranslate2 only; packed clips have them for
        free, a clip decoded alone costs one alignment pass more).

        What a clip gets depends only on the set of distinct clips in the call, never on their order:
        they are decoded in a canonical order (longest first, ties by :func:`audio_key`).
        """
        arrays = [_as_clip(c, i) for i, c in enumerate(clips)]
        if not arrays:
            return []
        keys = [audio_key(a) for a in arrays]
        distinct: dict[str, np.ndarray] = {}
        for key, array in zip(keys, arrays, strict=True):
            distinct.setdefault(key, array)
        order = sorted(distinct, key=lambda k: (-len(distinct[k]), k))
        with self._lock:
            started = time.perf_counter()
            results = self._transcribe([distinct[k] for k in order], beam_size, options or self.options, words)
            elapsed = (time.perf_counter() - started) / len(order)
        by_key = {k: replace(r, elapsed_seconds=elapsed) for k, r in zip(order, results, strict=True)}
        return [by_key[k] for k in keys]

    def _transcribe(
        self, clips: list[np.ndarray], beam_size: int, options: DecodeOptions, words: bool = False
    ) -> list[Transcription]:
        """One result per clip, in order; the clips are distinct and in the canonical order."""
        raise NotImplementedError

    def embed(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """One vector per clip (``[len(clips), d_model]`` float32): the mean of the encoder's output over
        the clip's own frames, each clip encoded alone (its vector depends on it alone). No decoding.

        What the diversity ranking measures distances in (:mod:`sync.active_learning`). CTranslate2
        encodes only the clip's frames (a 3-s clip costs a tenth of a 30-s window); transformers needs
        the padded window and keeps the clip's frames of it.
        """
        out = []
        with self._lock:
            for index, clip in enumerate(clips):
                clip = _as_clip(clip, index)
                # The encoder halves the 100 frames/s of the log-mel input; a clip over 30 s is cut there.
                frames = min(WINDOW_FRAMES, max(1, math.ceil(len(clip) / (2 * HOP_SAMPLES))))
                states = self._encoder_states(log_mel_features([clip], self.n_mels), frames)
                out.append(states.mean(axis=0))
        return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), dtype=np.float32)

    @property
    def n_mels(self) -> int:
        raise NotImplementedError

    def _encoder_states(self, features: np.ndarray, frames: int) -> np.ndarray:
        """``[frames, d_model]``: the encoder's output for the first ``frames`` of one clip's log-mel ``features``."""
        raise NotImplementedError

