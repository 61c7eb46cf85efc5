"""The CTranslate2 runtime: :class:`FasterWhisperEngine`, for a model exported to CTranslate2 (``model.bin``).

Speed: Whisper pads every clip to a 30-s window, so for Habla's 2-5 s segments the encoder does ~90 %
wasted work. With ``pack=True`` (the default on faster-whisper) short clips are laid end to end in one
window with a second of silence between them, decoded once, and each word is given back to the clip
it was spoken in (CTranslate2's cross-attention alignment). A packed clip is kept only if it passes the
checks the reference decoder applies to a window of its own; otherwise it is decoded again alone (see
:func:`~ml_backend.decoding.packed_clip_problem`), so packing never empties or garbles a transcript that
decoding alone would give. Windows are encoded and decoded several at a time in one CTranslate2 batch
(results are the same as one at a time), batches run side by side on CTranslate2 workers (one per core on
small machines), and the sampling fallbacks run only for clips decoded alone that need them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ml_backend.cpu import cpu_layout, cpu_threads
from ml_backend.decoding import DecodeOptions, compression_ratio, meets_no_speech_rule, packed_clip_problem
from ml_backend.engine import Engine, EngineError, Transcription, Word, make_transcription
from ml_backend.features import (
    HOP_SAMPLES,
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    WINDOW_SECONDS,
    feature_extractor,
    log_mel_features,
)
from ml_backend.windows import clip_at, lay_end_to_end, plan_windows

log = logging.getLogger(__name__)

MAX_INITIAL_TIMESTAMP_INDEX = 50  # the first timestamp within 1 s, as the reference decoder asks
ALIGNMENT_FRAMES_PER_SECOND = 50  # encoder frames: the resolution of the word alignment
# 30-s windows per CTranslate2 call. Batching pays with several threads per worker (bench clips, 1 worker x 2
# threads: 24 s one by one, 14.5 s by 8); with one thread it does not, and every window in flight holds its
# beams' cross-attention cache: 4 keeps the 60 bench clips under 1.2 GB packed, 1.6 GB one per window.
WINDOW_BATCH = 4
FALLBACK_SEED = 20_240_501  # sampling fallbacks reseed, so a clip decodes the same way in every call


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


@dataclass(frozen=True)
class _Decoded:
    """One clip's (or one window's) decode before it becomes a Transcription."""

    text: str
    avg_logprob: float
    no_speech_prob: float
    words: int = 0
    tokens: tuple[int, ...] = ()
    fallbacks: int = 0  # sampling decodes it took
    timed: tuple[Word, ...] = ()  # the words with their times in the clip, when asked for


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

    def _transcribe(
        self, clips: list[np.ndarray], beam_size: int, options: DecodeOptions, words: bool = False
    ) -> list[Transcription]:
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
        for index, result in zip(alone, self._decode_alone([clips[i] for i in alone], beam_size, options, words), strict=True):
            decoded[index] = (result, 1)
            self.counters["fallbacks"] += result.fallbacks
        self.counters["alone_clips"] += len(alone)
        return [
            make_transcription(
                r.text, r.avg_logprob, r.no_speech_prob, len(clips[i]) / SAMPLE_RATE, 0.0, options, n,
                r.timed if words else (),
            )
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

    def _decode_alone(
        self, clips: list[np.ndarray], beam_size: int, options: DecodeOptions, words: bool = False
    ) -> list[_Decoded]:
        """Clips, each alone in its window (a clip over 30 s in consecutive windows, as faster-whisper's
        ``transcribe`` cuts it), decoded in batches of windows."""
        features, owners, frames = [], [], []
        for index, clip in enumerate(clips):
            if len(clip) <= WINDOW_SAMPLES:
                features.append(log_mel_features([clip], self._ct2.n_mels)[0])
                owners.append(index)
                frames.append(len(clip) // HOP_SAMPLES)
                continue
            from faster_whisper.audio import pad_or_trim

            mel = feature_extractor(self._ct2.n_mels)(clip)[:, :-1]  # normalised over the whole clip
            for start in range(0, mel.shape[-1], 3000):
                features.append(pad_or_trim(mel[:, start : start + 3000]).astype(np.float32))
                owners.append(index)
                frames.append(min(3000, mel.shape[-1] - start))
        parts: list[list[_Decoded]] = [[] for _ in clips]
        batches = self._split(range(len(features)))
        for rows, results in zip(batches, self._map(
            lambda rows: self._decode_windows_alone(
                np.stack([features[r] for r in rows]), beam_size, options, [frames[r] for r in rows] if words else None
            ), batches
        ), strict=True):
            for row, result in zip(rows, results, strict=True):
                parts[owners[row]].append(result)
        out = []
        for pieces in parts:
            text = "".join(p.text for p in pieces)
            tokens = sum(len(p.tokens) + 1 for p in pieces)  # the end-of-text token is in each window's mean
            avg = sum(p.avg_logprob * (len(p.tokens) + 1) for p in pieces) / tokens
            timed = tuple(
                replace(w, start=w.start + WINDOW_SECONDS * k, end=w.end + WINDOW_SECONDS * k)
                for k, p in enumerate(pieces) for w in p.timed
            )
            out.append(_Decoded(
                text, avg if text.strip() else -30.0, max(p.no_speech_prob for p in pieces), words=len(text.split()),
                fallbacks=sum(p.fallbacks for p in pieces), timed=timed,
            ))
        return out

    def _decode_windows_alone(
        self, features: np.ndarray, beam_size: int, options: DecodeOptions, frames: list[int] | None = None
    ) -> list[_Decoded]:
        """One batch at the first temperature, then the reference decoder's fallbacks, window by window
        and seeded (:meth:`_sampler`), only for the windows that need them. With ``frames`` (each window's
        frames of audio) the chosen texts' words are aligned and timed."""
        encoded, features = self._encode_features(features)
        out = self._search_alone(encoded, features, beam_size, options)
        if frames is None:
            return out
        eot = self._tokenizer.eot
        rows = [k for k, d in enumerate(out) if any(t < eot for t in d.tokens)]
        if not rows:
            return out
        texts = [[t for t in out[k].tokens if t < eot] for k in rows]
        aligned = self._ct2.align(
            self._select(encoded, features, rows), self._sot, texts, [max(1, frames[k]) for k in rows], median_filter_width=7,
        )
        for k, tokens, alignment in zip(rows, texts, aligned, strict=True):
            out[k] = replace(out[k], timed=tuple(
                self._word(word_tokens, start, end, probs) for word_tokens, start, end, probs in self._timed_words(tokens, alignment)
            ))
        return out

    def _word(self, tokens: list[int], start: float, end: float, probs: list[float], offset: float = 0.0) -> Word:
        return Word(self._tokenizer.decode(tokens), round(max(0.0, start - offset), 3), round(max(0.0, end - offset), 3),
                    round(float(np.mean(probs)) if probs else 0.0, 4), len(tokens))

    def _search_alone(self, encoded: Any, features: np.ndarray, beam_size: int, options: DecodeOptions) -> list[_Decoded]:
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
        audio, spans = [], []
        for clips in windows:
            joined, bounds = lay_end_to_end(clips, options.pack_gap_seconds)
            audio.append(joined)
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
            timed: list[list[Word]] = [[] for _ in clips]
            for word_tokens, start, end, probs in self._timed_words(text_tokens[k], alignments.get(k)):
                owner = clip_at(spans[k], (start + end) / 2, half_gap)
                tokens[owner] += word_tokens
                logprobs[owner] += [math.log(max(p, 1e-12)) for p in probs]
                timed[owner].append(self._word(word_tokens, start, end, probs, offset=spans[k][owner][0]))
            no_speech = results[k][2]
            out.append([
                _Decoded(self._tokenizer.decode(tokens[i]), float(np.mean(logprobs[i])) if logprobs[i] else -30.0,
                         no_speech, words=len(timed[i]), tokens=tuple(tokens[i]), timed=tuple(timed[i]))
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

