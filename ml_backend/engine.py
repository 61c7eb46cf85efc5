"""The one Whisper inference engine: used by the backend, by active learning and by evaluation.

``load_engine(path)`` picks the runtime from what the path holds:

- a CTranslate2 dir (``model.bin``) runs on faster-whisper (int8 on CPU, float16 on GPU);
- a transformers dir (``config.json`` + weights) or a LoRA adapter dir (``adapter_config.json``, merged
  over its base at load time) runs on transformers;
- a registry ``models/`` dir means its CURRENT version, and a version dir means that version.

Every clip gets a :class:`Transcription` with a confidence in [0, 1] (the geometric mean of the chosen
tokens' probabilities, i.e. ``exp(avg_logprob)``, lowered further when the model also thinks the clip is
silence), Whisper's no-speech probability, the compression ratio of the text and a hallucination flag,
so that WER, active-learning doubt and prelabels all come from the same decoder. Engines are cached per
process; reloading a version costs nothing.

A clip's transcript depends on the clip, not on the call it came in:

- identical audio (same samples, whatever file or request it came from) is decoded once per call and
  every copy gets that one result;
- the distinct clips are put in a canonical order (longest first, ties by the hash of the samples)
  before anything else, so the same set of clips gives the same texts in any request order;
- a segment is never blanked: when Whisper thinks a clip is silence and is unsure of its words (the
  reference decoder's "no speech" rule) the best text is still returned, with a low confidence and the
  hallucination flag, and the annotator deletes it if it was noise.

Speed: Whisper pads every clip to a 30-s window, so for Habla's 2-5 s segments the encoder does ~90 %
wasted work. With ``pack=True`` (the default on faster-whisper) short clips are laid end to end in one
window with a second of silence between them, decoded once, and each word is given back to the clip
it was spoken in (CTranslate2's cross-attention alignment). A packed clip is kept only if it passes the
checks the reference decoder applies to a window of its own; otherwise it is decoded again alone (see
:func:`packed_clip_problem`), so packing never empties or garbles a transcript that decoding alone would
give. Windows are encoded and decoded several at a time in one CTranslate2 batch (results are the same
as one at a time), batches run side by side on CTranslate2 workers (one per core on small machines),
and the sampling fallbacks run only for clips decoded alone that need them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import logging
import math
import os
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.registry import (
    CARD_FILE,
    CURRENT_FILE,
    RegistryError,
    is_ct2_dir,
    list_versions,
    read_card,
    resolve,
    serving_dir,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
WINDOW_SECONDS = 30.0
WINDOW_SAMPLES = int(WINDOW_SECONDS * SAMPLE_RATE)
HOP_SAMPLES = 160  # one log-mel frame
WINDOW_FRAMES = 1500  # encoder frames in a 30-s window
# Thresholds of the reference Whisper decoder (openai/whisper, faster-whisper).
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
MAX_INITIAL_TIMESTAMP_INDEX = 50  # the first timestamp within 1 s, as the reference decoder asks
ALIGNMENT_FRAMES_PER_SECOND = 50  # encoder frames: the resolution of the word alignment
# A packed clip with fewer words than this per second of its audio lost words to its window-mates.
# Habla's VAD segments hold speech (Spanish runs at 2-3 words/s); a slow "sí... vale" still passes.
MIN_PACKED_WORDS_PER_SECOND = 0.5
# 30-s windows per CTranslate2 call. Batching pays with several threads per worker (bench clips, 1 worker x 2
# threads: 24 s one by one, 14.5 s by 8); with one thread it does not, and every window in flight holds its
# beams' cross-attention cache: 4 keeps the 60 bench clips under 1.2 GB packed, 1.6 GB one per window.
WINDOW_BATCH = 4
FALLBACK_SEED = 20_240_501  # sampling fallbacks reseed, so a clip decodes the same way in every call
ENGINE_CACHE_SIZE = 2  # the served version and the one before it (in-flight requests during a swap)


class EngineError(RuntimeError):
    """The model cannot be loaded or run; ``str()`` names the path and the reason."""


@dataclass(frozen=True)
class Transcription:
    text: str
    confidence: float  # [0, 1]: exp(mean token log-probability), x (1 - no_speech_prob) under the no-speech rule
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    likely_hallucination: bool
    audio_seconds: float
    elapsed_seconds: float  # this clip's share of the call's wall time (copies of one audio share one decode)
    window_clips: int = 1  # distinct clips that shared its 30-s window (1: decoded alone)


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


def cpu_threads(environ: Mapping[str, str] | None = None, cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CTranslate2's threads: HABLA_LS_CPU_THREADS, else the cores this process may use (its CPU
    affinity, capped by a cgroup CPU quota such as ``docker run --cpus=2``).

    Its OpenMP threads spin while they wait, so more threads than cores (a container seeing the host's
    core count, say) makes decoding several times slower: one window took 15 s with 4 threads on 2
    busy cores against 1.9 s with 2 (``bench/engine_speed.py --profile``).
    """
    env = os.environ if environ is None else environ
    if env.get("HABLA_LS_CPU_THREADS"):
        return max(1, int(env["HABLA_LS_CPU_THREADS"]))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to honour
    return max(1, cores)


def cpu_layout(cores: int) -> tuple[int, int]:
    """(workers, threads per worker) for ``cores``: CTranslate2 replicas that decode different windows
    at once, each on its own threads.

    Small decoder steps (a window's 5 beams) do not split well across threads: on 2 cores one window
    decoded with 2 threads took 2.0 s against 0.9 s with 1, so windows run side by side on one
    thread each (60 bench clips: 14 s on 1 worker x 2 threads, 10 s on 2 x 1). Past 4 cores the
    workers get more threads instead, so that a lone window (one Label Studio task) still uses several.
    """
    threads = max(1, cores // 4)
    return max(1, cores // threads), threads


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


def _make_transcription(
    text: str, avg_logprob: float, no_speech_prob: float, audio_seconds: float, elapsed: float,
    options: DecodeOptions, window_clips: int = 1,
) -> Transcription:
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
    )


@functools.lru_cache(maxsize=4)
def _feature_extractor(n_mels: int) -> Any:
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=n_mels)


def log_mel_features(clips: Sequence[np.ndarray], n_mels: int = 80) -> np.ndarray:
    """Whisper's input for each clip (``[len(clips), n_mels, 3000]`` float32), computed as faster-whisper's
    ``transcribe()`` does (and openai-whisper's): log-mel of the clip alone, normalised to its own peak,
    then padded to 30 s with zeros. transformers' ``WhisperFeatureExtractor`` pads the *audio* first, so its
    padding frames are "peak - 8 dB" instead of 0; on low-confidence audio that alone changes words. Both
    runtimes are fed this, so a model gives the same words on transformers and as a CTranslate2 export.
    """
    from faster_whisper.audio import pad_or_trim

    extractor = _feature_extractor(n_mels)
    # faster-whisper drops the last frame (it belongs to the 160-sample tail padding) before padding to 3000.
    return np.stack([pad_or_trim(extractor(np.asarray(c, dtype=np.float32))[:, :-1]) for c in clips]).astype(np.float32)


def audio_key(clip: np.ndarray) -> str:
    """Identifies a clip by its samples (sha256 of the float32 data): one key per distinct audio."""
    return hashlib.sha256(np.ascontiguousarray(clip, dtype=np.float32).tobytes()).hexdigest()


def plan_windows(lengths: Sequence[int], options: DecodeOptions) -> list[list[int]]:
    """Clip indices grouped into 30-s windows (first fit, in the order given; with gaps and a 1-s margin).

    Fed longest first (the canonical order), this is first-fit decreasing: few, full windows. A clip
    longer than ``pack_max_clip_seconds`` gets a window of its own, and so does every clip without packing.
    """
    if not options.pack:
        return [[i] for i in range(len(lengths))]
    limit = (WINDOW_SECONDS - 1.0) * SAMPLE_RATE
    gap = int(options.pack_gap_seconds * SAMPLE_RATE)
    windows: list[list[int]] = []
    used: list[float] = []
    for i, length in enumerate(lengths):
        if length > options.pack_max_clip_seconds * SAMPLE_RATE:
            windows.append([i])
            used.append(math.inf)
            continue
        needed = length + gap
        for w, filled in enumerate(used):
            if filled + needed <= limit:
                windows[w].append(i)
                used[w] += needed
                break
        else:
            windows.append([i])
            used.append(needed)
    return windows


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


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
        self, clips: Sequence[np.ndarray], *, beam_size: int = 5, options: DecodeOptions | None = None
    ) -> list[Transcription]:
        """One result per 16 kHz float32 clip, in order; copies of one audio get one (shared) result.

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
            results = self._transcribe([distinct[k] for k in order], beam_size, options or self.options)
            elapsed = (time.perf_counter() - started) / len(order)
        by_key = {k: replace(r, elapsed_seconds=elapsed) for k, r in zip(order, results, strict=True)}
        return [by_key[k] for k in keys]

    def _transcribe(self, clips: list[np.ndarray], beam_size: int, options: DecodeOptions) -> list[Transcription]:
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


# ---------------------------------------------------------------------------------------------------
# faster-whisper (CTranslate2)


@dataclass(frozen=True)
class _Decoded:
    """One clip's (or one window's) decode before it becomes a Transcription."""

    text: str
    avg_logprob: float
    no_speech_prob: float
    words: int = 0
    tokens: tuple[int, ...] = ()
    fallbacks: int = 0  # sampling decodes it took


@dataclass
class FasterWhisperEngine(Engine):
    """CTranslate2 driven directly (faster-whisper supplies the model, tokenizer and features).

    A clip decoded alone goes exactly as faster-whisper's ``transcribe(without_timestamps=True)`` would
    (same features, prompt and search), except that sampling fallbacks are seeded and skipped for
    silence, as the reference decoder does. On CPU the model has :func:`cpu_layout`'s workers, and
    batches of windows are decoded on them side by side. ``counters`` counts windows, packed clips,
    clips decoded (again) alone and sampling fallbacks since load (bench and tests read it).
    """

    backend: str = "faster-whisper"

    def __post_init__(self) -> None:
        super().__post_init__()
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        workers, threads = cpu_layout(cpu_threads()) if self.device == "cpu" else (1, 0)
        try:
            self._model = WhisperModel(
                str(self.model_path), device=self.device, compute_type=self.compute_type, cpu_threads=threads,
                num_workers=workers,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineError(f"{self.model_path}: cannot load with faster-whisper ({exc})") from exc
        self.workers = workers
        # CTranslate2 runs calls from several threads on its replicas at once (and releases the GIL).
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="engine") if workers > 1 else None
        self._ct2 = self._model.model
        multilingual = self._ct2.is_multilingual
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer, multilingual, task="transcribe", language=self.language if multilingual else None
        )
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))
        self._sot = list(self._tokenizer.sot_sequence)
        # Text tokens only, packed windows included: the words' alignment splits a window, and timestamp
        # tokens made packed decoding slower and worse (bench clips: WER 0.33 with them, 0.29 without).
        self._prompt = [*self._sot, self._tokenizer.no_timestamps]
        self.counters: collections.Counter[str] = collections.Counter()

    # -- planning -----------------------------------------------------------------------------------

    def _transcribe(self, clips: list[np.ndarray], beam_size: int, options: DecodeOptions) -> list[Transcription]:
        decoded: dict[int, tuple[_Decoded, int]] = {}
        windows = plan_windows([len(c) for c in clips], options)
        alone = [w[0] for w in windows if len(w) == 1]
        packed = [w for w in windows if len(w) > 1]
        chunks = self._split(packed)
        for chunk, results in zip(chunks, self._map(
            lambda chunk: self._decode_windows([[clips[i] for i in w] for w in chunk], beam_size, options), chunks
        ), strict=True):
            for window, shares in zip(chunk, results, strict=True):
                self.counters["packed_windows"] += 1
                self.counters["packed_clips"] += len(window)
                for index, result in zip(window, shares, strict=True):
                    problem = packed_clip_problem(
                        result.text, result.avg_logprob, result.words, len(clips[index]) / SAMPLE_RATE, options
                    )
                    if problem is None:
                        decoded[index] = (result, len(window))
                    else:
                        log.debug("clip %d of a packed window (%s): decoded again alone", index, problem)
                        self.counters["redecoded_alone"] += 1
                        alone.append(index)
        alone.sort()  # results do not depend on the batches (CTranslate2's are exact): sorted for a stable log
        for index, result in zip(alone, self._decode_alone([clips[i] for i in alone], beam_size, options), strict=True):
            decoded[index] = (result, 1)
            self.counters["fallbacks"] += result.fallbacks
        self.counters["alone_clips"] += len(alone)
        return [
            _make_transcription(r.text, r.avg_logprob, r.no_speech_prob, len(clips[i]) / SAMPLE_RATE, 0.0, options, n)
            for i, (r, n) in sorted(decoded.items())
        ]

    def _split(self, items: Sequence[Any]) -> list[list[Any]]:
        """Batches of at most WINDOW_BATCH windows, as many as there are workers when they are few."""
        size = min(WINDOW_BATCH, max(1, math.ceil(len(items) / self.workers)))
        return list(_chunks(items, size))

    def _map(self, work: Any, batches: list[Any]) -> list[Any]:
        """``work`` on each batch, on the workers side by side (one batch's results never depend on
        another's: CTranslate2's batched results are those of one window at a time)."""
        if self._pool is None or len(batches) < 2:
            return [work(b) for b in batches]
        return list(self._pool.map(work, batches))

    # -- CTranslate2 calls ----------------------------------------------------------------------------

    @property
    def n_mels(self) -> int:
        return int(self._ct2.n_mels)

    def _encoder_states(self, features: np.ndarray, frames: int) -> np.ndarray:
        import ctranslate2

        encoded, _ = self._encode_features(features[:, :, : 2 * frames])
        if self.device != "cpu":
            encoded = encoded.to_device(ctranslate2.Device.cpu)
        return np.asarray(encoded, dtype=np.float32)[0, :frames]

    def _encode(self, audio: list[np.ndarray]) -> tuple[Any, np.ndarray]:
        return self._encode_features(log_mel_features(audio, self._ct2.n_mels))

    def _encode_features(self, features: np.ndarray) -> tuple[Any, np.ndarray]:
        import ctranslate2

        return self._ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features))), features

    def _select(self, encoded: Any, features: np.ndarray, rows: list[int]) -> Any:
        """The encoder output of some rows of a batch (copied on CPU, encoded again on a GPU)."""
        import ctranslate2

        if len(rows) == features.shape[0]:
            return encoded
        if self.device == "cpu":
            return ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[rows]))
        return self._encode_features(features[rows])[0]

    def _sampler(self) -> Any:
        """A fresh CTranslate2 model for one clip's sampling fallbacks, so they draw the same numbers in
        every call and process. CTranslate2 seeds a worker thread's generator once, when that thread
        first samples, from the seed set at that moment; ``set_random_seed`` later has no effect
        (CTranslate2 issue #1757). A new model has a new worker thread: ~0.3 s, only for such clips."""
        import ctranslate2

        ctranslate2.set_random_seed(FALLBACK_SEED)
        # One thread: the CPU sampling op may run on OpenMP workers, whose generators live on across models.
        return ctranslate2.models.Whisper(
            str(self.model_path), device=self.device, compute_type=self.compute_type, intra_threads=1
        )

    def _generate(
        self, model: Any, encoded: Any, count: int, *, beam_size: int, temperature: float, max_new_tokens: int | None
    ) -> list[tuple[list[int], float, float]]:
        """(tokens, avg log-prob, no-speech prob) per row, with faster-whisper's search settings."""
        limit = self._model.max_length
        max_length = min(limit, len(self._prompt) + max_new_tokens) if max_new_tokens else limit
        if temperature > 0:
            search: dict[str, Any] = dict(
                beam_size=1, num_hypotheses=max(beam_size, 1), sampling_topk=0, sampling_temperature=temperature
            )
        else:
            search = dict(beam_size=max(beam_size, 1))
        results = model.generate(
            encoded, [self._prompt] * count, max_length=max_length, return_scores=True, return_no_speech_prob=True,
            suppress_blank=True, suppress_tokens=self._suppress, max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
            **search,
        )
        out = []
        for result in results:
            tokens = list(result.sequences_ids[0])
            # faster-whisper's recovery of the mean log-probability (end-of-text included) from the score.
            out.append((tokens, result.scores[0] * len(tokens) / (len(tokens) + 1), float(result.no_speech_prob)))
        return out

    def _needs_fallback(self, attempt: _Decoded, options: DecodeOptions) -> bool:
        if meets_no_speech_rule(attempt.avg_logprob, attempt.no_speech_prob, options):
            return False  # silence: sampling would only invent words
        return (
            compression_ratio(attempt.text.strip()) > options.compression_ratio_threshold
            or attempt.avg_logprob < options.log_prob_threshold
        )

    def _attempt(self, result: tuple[list[int], float, float]) -> _Decoded:
        tokens, avg, no_speech = result
        text = self._tokenizer.decode(tokens)
        return _Decoded(text, avg, no_speech, words=len(text.split()), tokens=tuple(tokens))

    # -- one clip per window ------------------------------------------------------------------------

    def _decode_alone(self, clips: list[np.ndarray], beam_size: int, options: DecodeOptions) -> list[_Decoded]:
        """Clips, each alone in its window (a clip over 30 s in consecutive windows, as faster-whisper's
        ``transcribe`` cuts it), decoded in batches of windows."""
        features, owners = [], []
        for index, clip in enumerate(clips):
            if len(clip) <= WINDOW_SAMPLES:
                features.append(log_mel_features([clip], self._ct2.n_mels)[0])
                owners.append(index)
                continue
            from faster_whisper.audio import pad_or_trim

            mel = _feature_extractor(self._ct2.n_mels)(clip)[:, :-1]  # normalised over the whole clip
            for start in range(0, mel.shape[-1], 3000):
                features.append(pad_or_trim(mel[:, start : start + 3000]).astype(np.float32))
                owners.append(index)
        parts: list[list[_Decoded]] = [[] for _ in clips]
        batches = self._split(range(len(features)))
        for rows, results in zip(batches, self._map(
            lambda rows: self._decode_windows_alone(np.stack([features[r] for r in rows]), beam_size, options), batches
        ), strict=True):
            for row, result in zip(rows, results, strict=True):
                parts[owners[row]].append(result)
        out = []
        for pieces in parts:
            text = "".join(p.text for p in pieces)
            tokens = sum(len(p.tokens) + 1 for p in pieces)  # the end-of-text token is in each window's mean
            avg = sum(p.avg_logprob * (len(p.tokens) + 1) for p in pieces) / tokens
            out.append(_Decoded(
                text, avg if text.strip() else -30.0, max(p.no_speech_prob for p in pieces), words=len(text.split()),
                fallbacks=sum(p.fallbacks for p in pieces),
            ))
        return out

    def _decode_windows_alone(self, features: np.ndarray, beam_size: int, options: DecodeOptions) -> list[_Decoded]:
        """One batch at the first temperature, then the reference decoder's fallbacks, window by window
        and seeded (:meth:`_sampler`), only for the windows that need them."""
        encoded, features = self._encode_features(features)
        temperatures = options.temperatures
        greedy_first = temperatures[0] == 0
        first = self._generate(
            self._ct2, encoded, len(features), beam_size=beam_size, temperature=0.0, max_new_tokens=options.max_new_tokens
        ) if greedy_first else [None] * len(features)
        out = []
        for row, result in enumerate(first):
            attempts = [] if result is None else [self._attempt(result)]
            remaining = temperatures[1:] if greedy_first else temperatures
            if remaining and (not attempts or self._needs_fallback(attempts[-1], options)):
                sampler, one = self._sampler(), self._select(encoded, features, [row])
                for temperature in remaining:
                    attempts.append(self._attempt(self._generate(
                        sampler, one, 1, beam_size=beam_size, temperature=temperature, max_new_tokens=options.max_new_tokens
                    )[0]))
                    if not self._needs_fallback(attempts[-1], options):
                        break
                del sampler
            best = attempts[-1]
            if self._needs_fallback(best, options):
                # Every temperature failed: the best-scoring text that does not loop (the reference's choice).
                looping = options.compression_ratio_threshold
                best = max([a for a in attempts if compression_ratio(a.text.strip()) <= looping] or attempts,
                           key=lambda a: a.avg_logprob)
            out.append(replace(best, fallbacks=len(attempts) - (1 if greedy_first else 0)))
        return out

    # -- several clips per window -------------------------------------------------------------------

    def _decode_windows(self, windows: list[list[np.ndarray]], beam_size: int, options: DecodeOptions) -> list[list[_Decoded]]:
        """Each window's clips laid end to end (a gap after each), decoded in one batch by beam search at
        temperature 0 (no fallback here: a clip that would need one is decoded alone), each word given
        back to the clip its alignment falls in. Every clip of a window gets the window's no-speech
        probability (Whisper gives one per window)."""
        gap = np.zeros(int(options.pack_gap_seconds * SAMPLE_RATE), dtype=np.float32)
        audio, spans = [], []
        for clips in windows:
            bounds, cursor = [], 0
            for clip in clips:
                bounds.append((cursor / SAMPLE_RATE, (cursor + len(clip)) / SAMPLE_RATE))
                cursor += len(clip) + len(gap)
            audio.append(np.concatenate([part for clip in clips for part in (clip, gap)]))
            spans.append(bounds)
        encoded, features = self._encode(audio)
        per_clip = options.max_new_tokens
        results = self._generate(
            self._ct2, encoded, len(audio), beam_size=beam_size, temperature=0.0,
            max_new_tokens=per_clip * max(len(w) for w in windows) if per_clip else None,
        )
        eot = self._tokenizer.eot
        text_tokens = [[t for t in tokens if t < eot] for tokens, _avg, _ns in results]
        rows = [k for k, tokens in enumerate(text_tokens) if tokens]
        alignments: dict[int, Any] = {}
        if rows:
            aligned = self._ct2.align(
                self._select(encoded, features, rows), self._sot, [text_tokens[k] for k in rows],
                [min(len(audio[k]) // HOP_SAMPLES, features.shape[-1]) for k in rows], median_filter_width=7,
            )
            alignments = dict(zip(rows, aligned, strict=True))
        half_gap = options.pack_gap_seconds / 2
        out = []
        for k, clips in enumerate(windows):
            tokens: list[list[int]] = [[] for _ in clips]
            logprobs: list[list[float]] = [[] for _ in clips]
            words = [0 for _ in clips]
            for word_tokens, start, end, probs in self._timed_words(text_tokens[k], alignments.get(k)):
                owner = _owner(spans[k], (start + end) / 2, half_gap)
                tokens[owner] += word_tokens
                logprobs[owner] += [math.log(max(p, 1e-12)) for p in probs]
                words[owner] += 1
            no_speech = results[k][2]
            out.append([
                _Decoded(self._tokenizer.decode(tokens[i]), float(np.mean(logprobs[i])) if logprobs[i] else -30.0,
                         no_speech, words=words[i], tokens=tuple(tokens[i]))
                for i in range(len(clips))
            ])
        return out

    def _timed_words(self, tokens: list[int], alignment: Any) -> list[tuple[list[int], float, float, list[float]]]:
        """(tokens, start s, end s, token probabilities) of each word, from CTranslate2's DTW path."""
        if not tokens or alignment is None or not alignment.alignments:
            return []
        eot = self._tokenizer.eot
        _words, word_tokens = self._tokenizer.split_to_word_tokens([*tokens, eot])
        path = np.asarray(alignment.alignments)
        # The path enters each text token once: its first frame there is the token's start.
        entered = np.concatenate(([True], np.diff(path[:, 0]) != 0))
        starts = path[entered, 1] / ALIGNMENT_FRAMES_PER_SECOND
        probs = list(alignment.text_token_probs)
        out, cursor = [], 0
        for piece in word_tokens:
            first, cursor = cursor, cursor + len(piece)
            if piece[0] >= eot:
                continue
            start = float(starts[min(first, len(starts) - 1)])
            end = float(starts[min(cursor, len(starts) - 1)])
            out.append((list(piece), start, end, probs[first:cursor]))
        return out


def _owner(spans: list[tuple[float, float]], t: float, slack: float) -> int:
    """The clip whose span (widened by half a gap) holds time ``t``; else the nearest one."""
    for i, (start, end) in enumerate(spans):
        if start - slack <= t < end + slack:
            return i
    return min(range(len(spans)), key=lambda i: min(abs(t - spans[i][0]), abs(t - spans[i][1])))


# ---------------------------------------------------------------------------------------------------
# transformers (full weights or LoRA adapter)


def _adapter_base(adapter_dir: Path, base_ref: str) -> Path | str:
    """Where an adapter's base lives: an absolute path, a path relative to the adapter, or a registry version."""
    candidate = Path(base_ref)
    if candidate.is_absolute() and candidate.exists():
        return candidate
    relative = (adapter_dir / base_ref).resolve()
    if relative.exists():
        return relative
    # models/<version>/hf/adapter_config.json naming a sibling version: models/<base_ref>/
    for models_dir in (adapter_dir.parent.parent, adapter_dir.parent):
        if (models_dir / base_ref / CARD_FILE).is_file():
            return serving_hf_dir(models_dir / base_ref)
    return base_ref  # a hub id or cached name; loading fails with a clear message when offline


def serving_hf_dir(version_path: Path) -> Path:
    from ml_backend.registry import HF_SUBDIR

    hf = version_path / HF_SUBDIR
    return hf if hf.is_dir() else version_path


@dataclass
class TransformersEngine(Engine):
    backend: str = "transformers"

    def __post_init__(self) -> None:
        super().__post_init__()
        import json

        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        path = self.model_path
        torch_device = "cuda" if self.device == "cuda" else "cpu"
        dtype = torch.float16 if self.compute_type == "float16" and torch_device == "cuda" else torch.float32
        try:
            if (path / "adapter_config.json").is_file():
                from peft import PeftModel

                base_ref = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
                if not base_ref:
                    raise EngineError(f"{path}/adapter_config.json: no base_model_name_or_path")
                base = _adapter_base(path, base_ref)
                model = WhisperForConditionalGeneration.from_pretrained(str(base), dtype=dtype)
                # Merged once at load: serving then costs the same as a plain model.
                model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
                processor_dir = path if (path / "tokenizer.json").is_file() else Path(str(base))
            else:
                model = WhisperForConditionalGeneration.from_pretrained(str(path), dtype=dtype)
                processor_dir = path
            self._processor = WhisperProcessor.from_pretrained(str(processor_dir))
        except (OSError, ValueError) as exc:
            raise EngineError(f"{path}: cannot load with transformers ({exc})") from exc
        self._model = model.to(torch_device).eval()
        self._torch_device = torch_device
        self._dtype = dtype
        tokenizer = self._processor.tokenizer
        self._eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        self._no_speech_id = tokenizer.convert_tokens_to_ids("<|nospeech|>")
        if self._no_speech_id in (None, tokenizer.unk_token_id):
            self._no_speech_id = tokenizer.convert_tokens_to_ids("<|nocaptions|>")

    def _transcribe(self, clips: list[np.ndarray], beam_size: int, options: DecodeOptions) -> list[Transcription]:
        import torch

        started = time.perf_counter()
        # faster-whisper's features, not WhisperFeatureExtractor's: a transformers dir and its CTranslate2
        # export then see the same input, so evaluating either gives the same words (see log_mel_features).
        features = torch.from_numpy(log_mel_features(clips, self._model.config.num_mel_bins)).to(
            self._torch_device, self._dtype
        )
        limit = self._model.config.max_target_positions - 4  # room for the SOT/language/task/notimestamps prompt
        max_new = min(options.max_new_tokens or limit, limit)
        with torch.inference_mode():
            generated = self._model.generate(
                features,
                language=self.language,
                task="transcribe",
                num_beams=max(beam_size, 1),
                do_sample=False,
                max_new_tokens=max_new,
                return_timestamps=False,
            )
            sequences = generated if isinstance(generated, torch.Tensor) else generated["sequences"]
            avg_logprobs, no_speech = self._score(features, sequences)
        texts = self._processor.batch_decode(sequences, skip_special_tokens=True)
        elapsed = (time.perf_counter() - started) / len(clips)
        return [
            _make_transcription(text, avg, ns, len(clip) / SAMPLE_RATE, elapsed, options)
            for text, avg, ns, clip in zip(texts, avg_logprobs, no_speech, clips, strict=True)
        ]

    @property
    def n_mels(self) -> int:
        return int(self._model.config.num_mel_bins)

    def _encoder_states(self, features: np.ndarray, frames: int) -> np.ndarray:
        import torch

        with torch.inference_mode():
            tensor = torch.from_numpy(features).to(self._torch_device, self._dtype)
            return self._model.get_encoder()(tensor).last_hidden_state[0, :frames].float().cpu().numpy()

    def _prompt(self) -> list[int]:
        tokenizer = self._processor.tokenizer
        return [
            tokenizer.convert_tokens_to_ids(t)
            for t in ("<|startoftranscript|>", f"<|{self.language}|>", "<|transcribe|>", "<|notimestamps|>")
        ]

    def _score(self, features, sequences) -> tuple[list[float], list[float]]:
        """Teacher-forced log-probabilities of the emitted tokens, and P(no speech) after the SOT token.

        ``generate`` scores are not comparable across beam search and greedy; one forward pass over the
        chosen tokens gives the same quantity faster-whisper reports, whatever the search was.
        """
        import torch

        prompt = self._prompt()
        rows = []
        for seq in sequences.tolist():
            # transformers 5 returns generated tokens only; older versions prefix the prompt.
            tokens = [t for t in seq if t not in prompt]
            text_tokens = []
            for t in tokens:
                text_tokens.append(t)
                if t == self._eot:
                    break
            if not text_tokens or text_tokens[-1] != self._eot:
                text_tokens.append(self._eot)
            rows.append(text_tokens)
        width = max(len(r) for r in rows)
        decoder_input = torch.full((len(rows), len(prompt) + width), self._eot, dtype=torch.long)
        for i, row in enumerate(rows):
            decoder_input[i, : len(prompt) + len(row)] = torch.tensor(prompt + row)
        decoder_input = decoder_input.to(self._torch_device)
        logits = self._model(input_features=features, decoder_input_ids=decoder_input).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        no_speech = torch.softmax(logits[:, 0, :], dim=-1)[:, self._no_speech_id].tolist()
        averages = []
        for i, row in enumerate(rows):
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(row), device=logprobs.device)
            chosen = logprobs[i, positions, torch.tensor(row, device=logprobs.device)]
            averages.append(float(chosen.mean()))
        return averages, no_speech


# ---------------------------------------------------------------------------------------------------
# Loading and the per-process cache

_cache: OrderedDict[tuple, Engine] = OrderedDict()
_cache_lock = threading.Lock()
_loading: dict[tuple, threading.Lock] = {}


def pick_device(device: str = "auto") -> str:
    if device != "auto":
        return device
    try:
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    except Exception:  # noqa: BLE001 - any failure to probe a GPU means "use the CPU"
        return "cpu"


def default_compute_type(backend: str, device: str) -> str:
    if device == "cuda":
        return "float16"
    return "int8" if backend == "faster-whisper" else "float32"


def locate_model(model: str | Path) -> tuple[str, Path]:
    """(version label, dir to load) for a registry dir, a version dir, or a model dir."""
    path = Path(model).expanduser()
    if not path.exists():
        raise EngineError(f"{path}: no such model dir")
    if (path / CURRENT_FILE).is_file() or (not (path / CARD_FILE).exists() and list_versions(path)):
        try:
            version, load_dir = resolve(path)
        except RegistryError as exc:
            raise EngineError(str(exc)) from exc
        return version, load_dir.resolve()
    if (path / CARD_FILE).is_file():
        version = str(read_card(path).get("version") or path.name)
        try:
            return version, serving_dir(path).resolve()
        except RegistryError as exc:
            raise EngineError(str(exc)) from exc
    try:
        load_dir = serving_dir(path)
    except RegistryError as exc:
        raise EngineError(str(exc)) from exc
    # A ct2/ or hf/ dir inside a version: label it with the version.
    parent = load_dir.parent if load_dir == path else path
    if (parent / CARD_FILE).is_file():
        return str(read_card(parent).get("version") or parent.name), load_dir.resolve()
    return load_dir.name, load_dir.resolve()


def load_engine(
    model: str | Path,
    *,
    device: str = "auto",
    compute_type: str | None = None,
    language: str = "es",
    options: DecodeOptions | None = None,
) -> Engine:
    """The engine for ``model`` (registry dir → CURRENT), loaded once per process and reused."""
    version, load_dir = locate_model(model)
    device = pick_device(device)
    backend = "faster-whisper" if is_ct2_dir(load_dir) else "transformers"
    compute_type = compute_type or default_compute_type(backend, device)
    options = options or decode_options_from_env(pack_default=backend == "faster-whisper")
    weights = load_dir / ("model.bin" if backend == "faster-whisper" else "config.json")
    if not weights.exists():
        weights = load_dir / "adapter_config.json"
    # The weights' mtime is in the key so that a re-exported dir with the same name is reloaded.
    key = (str(load_dir), weights.stat().st_mtime_ns if weights.exists() else 0, version, device, compute_type, language, options)
    with _cache_lock:
        engine = _cache.get(key)
        if engine is not None:
            _cache.move_to_end(key)
            return engine
        loading = _loading.setdefault(key, threading.Lock())
    with loading:  # concurrent first requests for one model load it once
        with _cache_lock:
            engine = _cache.get(key)
        if engine is None:
            engine = _load(key, version, load_dir, backend, device, compute_type, language, options)
    with _cache_lock:
        _loading.pop(key, None)
    return engine


def _load(
    key: tuple, version: str, load_dir: Path, backend: str, device: str, compute_type: str, language: str,
    options: DecodeOptions,
) -> Engine:
    cls = FasterWhisperEngine if backend == "faster-whisper" else TransformersEngine
    started = time.perf_counter()
    engine = cls(
        version=version, model_path=load_dir, language=language, device=device, compute_type=compute_type, options=options
    )
    log.info("loaded %s (%s, %s %s) in %.1f s", version, backend, device, compute_type, time.perf_counter() - started)
    with _cache_lock:
        _cache[key] = engine
        while len(_cache) > ENGINE_CACHE_SIZE:
            _cache.popitem(last=False)  # still usable by requests that hold it
    return engine


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
