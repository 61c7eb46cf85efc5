"""The one Whisper inference engine: used by the backend, by active learning and by evaluation.

``load_engine(path)`` picks the runtime from what the path holds:

- a CTranslate2 dir (``model.bin``) runs on faster-whisper (int8 on CPU, float16 on GPU);
- a transformers dir (``config.json`` + weights) or a LoRA adapter dir (``adapter_config.json``, merged
  over its base at load time) runs on transformers;
- a registry ``models/`` dir means its CURRENT version, and a version dir means that version.

Every clip gets a :class:`Transcription` with a confidence in [0, 1] (the geometric mean of the chosen
tokens' probabilities, i.e. ``exp(avg_logprob)``), Whisper's no-speech probability, the compression
ratio of the text and a hallucination flag, so that WER, active-learning doubt and prelabels all come
from the same decoder. Engines are cached per process; reloading a version costs nothing.

Speed: Whisper pads every clip to a 30-s window, so for Habla's 2-5 s segments the encoder does ~90 %
wasted work. With ``pack=True`` (the default on faster-whisper) short clips are laid end to end in one
window with a second of silence between them, decoded once with word timestamps, and each word is
given back to the clip it was spoken in.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
# Thresholds of the reference Whisper decoder (openai/whisper, faster-whisper).
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
ENGINE_CACHE_SIZE = 2  # the served version and the one before it (in-flight requests during a swap)


class EngineError(RuntimeError):
    """The model cannot be loaded or run; ``str()`` names the path and the reason."""


@dataclass(frozen=True)
class Transcription:
    text: str
    confidence: float  # [0, 1]: exp(mean log-probability of the emitted tokens)
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    likely_hallucination: bool
    audio_seconds: float
    elapsed_seconds: float  # this clip's share of the batch's wall time


@dataclass(frozen=True)
class DecodeOptions:
    """How clips are decoded; the defaults are the reference decoder's, with the language forced."""

    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    max_new_tokens: int | None = None  # None: up to Whisper's 448-token limit
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
    # Text the model itself thinks is silence, decoded with low confidence: the classic "Subtítulos..."
    return no_speech_prob > options.no_speech_threshold and avg_logprob < options.log_prob_threshold


def _make_transcription(
    text: str, avg_logprob: float, no_speech_prob: float, audio_seconds: float, elapsed: float,
    options: DecodeOptions,
) -> Transcription:
    text = text.strip()
    ratio = compression_ratio(text)
    avg_logprob = float(avg_logprob) if math.isfinite(avg_logprob) else -30.0
    return Transcription(
        text=text,
        confidence=float(min(1.0, max(0.0, math.exp(avg_logprob)))),
        avg_logprob=avg_logprob,
        no_speech_prob=float(no_speech_prob),
        compression_ratio=ratio,
        likely_hallucination=is_likely_hallucination(text, avg_logprob, no_speech_prob, ratio, options),
        audio_seconds=audio_seconds,
        elapsed_seconds=elapsed,
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
        """One result per 16 kHz float32 clip, in order."""
        arrays = [_as_clip(c, i) for i, c in enumerate(clips)]
        if not arrays:
            return []
        with self._lock:
            return self._transcribe(arrays, beam_size, options or self.options)

    def _transcribe(self, clips: list[np.ndarray], beam_size: int, options: DecodeOptions) -> list[Transcription]:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------
# faster-whisper (CTranslate2)


@dataclass
class FasterWhisperEngine(Engine):
    backend: str = "faster-whisper"

    def __post_init__(self) -> None:
        super().__post_init__()
        from faster_whisper import WhisperModel

        threads = int(os.environ.get("HABLA_LS_CPU_THREADS", "0"))
        try:
            self._model = WhisperModel(
                str(self.model_path), device=self.device, compute_type=self.compute_type, cpu_threads=threads
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineError(f"{self.model_path}: cannot load with faster-whisper ({exc})") from exc

    def _common_kwargs(self, beam_size: int, options: DecodeOptions) -> dict[str, Any]:
        return dict(
            language=self.language,
            task="transcribe",
            beam_size=beam_size,
            best_of=max(beam_size, 1),
            temperature=list(options.temperatures),
            compression_ratio_threshold=options.compression_ratio_threshold,
            log_prob_threshold=options.log_prob_threshold,
            # Keep segments the model thinks are silence: we report no_speech_prob and decide ourselves.
            no_speech_threshold=None,
            condition_on_previous_text=False,
            vad_filter=False,
            max_new_tokens=options.max_new_tokens,
        )

    def _transcribe(self, clips: list[np.ndarray], beam_size: int, options: DecodeOptions) -> list[Transcription]:
        results: list[Transcription | None] = [None] * len(clips)
        for group in self._groups(clips, options):
            started = time.perf_counter()
            if len(group) == 1:
                text, avg, no_speech = self._decode_one(clips[group[0]], beam_size, options)
                decoded = {group[0]: (text, avg, no_speech)}
            else:
                decoded = self._decode_packed([clips[i] for i in group], group, beam_size, options)
            elapsed = (time.perf_counter() - started) / len(group)
            for index, (text, avg, no_speech) in decoded.items():
                if no_speech > options.no_speech_threshold and avg < options.log_prob_threshold:
                    text = ""  # what the reference decoder does with a silent window
                results[index] = _make_transcription(
                    text, avg, no_speech, len(clips[index]) / SAMPLE_RATE, elapsed, options
                )
        return [r for r in results if r is not None]

    def _groups(self, clips: list[np.ndarray], options: DecodeOptions) -> list[list[int]]:
        """Consecutive clips that fit one window together (with gaps and a little margin)."""
        if not options.pack:
            return [[i] for i in range(len(clips))]
        limit = (WINDOW_SECONDS - 1.0) * SAMPLE_RATE
        gap = int(options.pack_gap_seconds * SAMPLE_RATE)
        groups: list[list[int]] = []
        current: list[int] = []
        used = 0
        for i, clip in enumerate(clips):
            if len(clip) > options.pack_max_clip_seconds * SAMPLE_RATE:
                groups.append([i])
                continue
            needed = len(clip) + gap
            if current and used + needed > limit:
                groups.append(current)
                current, used = [], 0
            current.append(i)
            used += needed
        if current:
            groups.append(current)
        return groups

    def _decode_one(self, clip: np.ndarray, beam_size: int, options: DecodeOptions) -> tuple[str, float, float]:
        segments, _info = self._model.transcribe(clip, without_timestamps=True, **self._common_kwargs(beam_size, options))
        texts, logprob_sum, token_count, no_speech = [], 0.0, 0, 0.0
        for segment in segments:
            texts.append(segment.text)
            n = len(segment.tokens) + 1  # faster-whisper's avg_logprob counts the end-of-text token
            logprob_sum += segment.avg_logprob * n
            token_count += n
            no_speech = max(no_speech, segment.no_speech_prob)
        if token_count == 0:
            return "", -30.0, 1.0
        return "".join(texts), logprob_sum / token_count, no_speech

    def _decode_packed(
        self, clips: list[np.ndarray], indices: list[int], beam_size: int, options: DecodeOptions
    ) -> dict[int, tuple[str, float, float]]:
        gap = np.zeros(int(options.pack_gap_seconds * SAMPLE_RATE), dtype=np.float32)
        spans: list[tuple[float, float]] = []
        pieces: list[np.ndarray] = []
        cursor = 0
        for clip in clips:
            pieces += [clip, gap]
            spans.append((cursor / SAMPLE_RATE, (cursor + len(clip)) / SAMPLE_RATE))
            cursor += len(clip) + len(gap)
        window = np.concatenate(pieces)
        segments, _info = self._model.transcribe(
            window, without_timestamps=False, word_timestamps=True, **self._common_kwargs(beam_size, options)
        )
        words: list[list[str]] = [[] for _ in clips]
        logprobs: list[list[float]] = [[] for _ in clips]
        no_speech = [0.0 for _ in clips]
        half_gap = options.pack_gap_seconds / 2
        for segment in segments:
            for word in segment.words or []:
                middle = (word.start + word.end) / 2
                owner = _owner(spans, middle, half_gap)
                words[owner].append(word.word)
                logprobs[owner].append(math.log(max(word.probability, 1e-12)))
            for owner, (start, end) in enumerate(spans):
                if segment.start < end + half_gap and segment.end > start - half_gap:
                    no_speech[owner] = max(no_speech[owner], segment.no_speech_prob)
        out = {}
        for k, index in enumerate(indices):
            if logprobs[k]:
                out[index] = ("".join(words[k]), float(np.mean(logprobs[k])), no_speech[k])
            else:
                out[index] = ("", -30.0, max(no_speech[k], 1.0 if not words[k] else 0.0))
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
