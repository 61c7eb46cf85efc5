"""``bench/engine_speed.py --profile``: where the time of one packed window goes, stage by stage."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from bench.engine_speed_clips import make_clips


def _best(fn, repeat: int = 3) -> tuple[float, object]:
    """The fastest of ``repeat`` runs (the least disturbed by other work) and the last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def profile_window(ct2: Path, beam_size: int, clip_count: int) -> None:
    """Where the time of one packed window goes, stage by stage, with faster-whisper's own transcribe()
    of the same window (what the engine called before) for comparison."""
    import collections

    import ctranslate2
    import numpy as np

    from ml_backend.audio import decode
    from ml_backend.cpu import cpu_layout, cpu_threads
    from ml_backend.engine import audio_key
    from ml_backend.features import log_mel_features
    from ml_backend.loading import load_engine
    from ml_backend.windows import plan_windows

    with tempfile.TemporaryDirectory(prefix="engine-profile-") as tmp:
        audio = [decode(r["path"]) for r in make_clips(clip_count, Path(tmp))]
    engine = load_engine(ct2, device="cpu")
    options = engine.options
    audio.sort(key=lambda a: (-len(a), audio_key(a)))  # the engine's canonical order
    windows = [[audio[i] for i in w] for w in plan_windows([len(a) for a in audio], options) if len(w) > 1]
    gap = np.zeros(int(options.pack_gap_seconds * 16000), dtype=np.float32)
    joined = [np.concatenate([part for clip in w for part in (clip, gap)]) for w in windows]
    window, clips = joined[0], windows[0]
    model, threads = engine._ct2, cpu_threads()
    workers, per_worker = cpu_layout(threads)
    print(f"one packed window: {len(clips)} clips, {sum(len(c) for c in clips) / 16000:.1f} s of speech in "
          f"{len(window) / 16000:.1f} s; whisper-base int8 on {threads} cores ({workers} workers x {per_worker} "
          f"threads), beam {beam_size}; load average {os.getloadavg()[0]:.2f}")
    engine.transcribe(clips[:1], beam_size=beam_size)  # warm-up

    def view(array: np.ndarray) -> object:
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(array))

    rows: list[tuple[str, float, str]] = []
    t, features = _best(lambda: log_mel_features([window]))
    rows.append(("log-mel features", t, ""))
    t, encoded = _best(lambda: model.encode(view(features)))
    rows.append(("encoder (one 30-s window)", t, ""))
    prompt = engine._prompt

    def generate(beam: int, **extra: object) -> object:
        return model.generate(encoded, [prompt], beam_size=beam, return_scores=True, suppress_tokens=engine._suppress, **extra)[0]

    for beam in sorted({beam_size, 1}, reverse=True):
        t, result = _best(lambda beam=beam: generate(beam))
        tokens = len(result.sequences_ids[0])
        rows.append((f"decoder, beam {beam}", t, f"{tokens} tokens, {1000 * t / max(tokens, 1):.0f} ms/token"))
    text_tokens = [x for x in generate(beam_size).sequences_ids[0] if x < engine._tokenizer.eot]
    t, _ = _best(lambda: model.align(encoded, engine._sot, [text_tokens], [len(window) // 160]))
    rows.append(("word alignment (cross-attention DTW)", t, f"{len(text_tokens)} tokens"))
    def fallback() -> object:
        return engine._sampler().generate(encoded, [prompt], beam_size=1, num_hypotheses=beam_size, sampling_topk=0,
                                           sampling_temperature=0.2, suppress_tokens=engine._suppress)

    t, _ = _best(fallback, repeat=1)
    rows.append((f"one sampling fallback (T=0.2, best of {beam_size})", t, "per temperature tried, model load included"))
    engine.counters.clear()
    t, _ = _best(lambda: engine.transcribe(clips, beam_size=beam_size), repeat=1)
    rows.append(("engine.transcribe(these clips)", t, f"counters {dict(engine.counters)}"))

    # What the engine did before: faster-whisper's transcribe() of the window with word timestamps.
    calls: collections.Counter[str] = collections.Counter()
    spent: collections.Counter[str] = collections.Counter()

    class Timed:
        def __init__(self, inner: object):
            self._inner = inner

        def __getattr__(self, name: str) -> object:
            value = getattr(self._inner, name)
            if name not in ("encode", "generate", "align"):
                return value

            def call(*args: object, **kwargs: object) -> object:
                started = time.perf_counter()
                try:
                    return value(*args, **kwargs)
                finally:
                    key = name if name != "generate" else f"generate T={kwargs.get('sampling_temperature', 0)}"
                    spent[key] += time.perf_counter() - started
                    calls[key] += 1

            return call

    whisper = engine._model
    inner, whisper.model = whisper.model, Timed(whisper.model)
    try:
        def old() -> object:
            segments, _ = whisper.transcribe(
                window, language="es", beam_size=beam_size, best_of=beam_size, temperature=list(options.temperatures),
                no_speech_threshold=None, condition_on_previous_text=False, vad_filter=False, word_timestamps=True,
            )
            return list(segments)

        t, _ = _best(old, repeat=1)
    finally:
        whisper.model = inner
    detail = ", ".join(f"{k} {calls[k]}x {spent[k]:.2f} s" for k in sorted(calls))
    rows.append(("before: faster-whisper transcribe(word_timestamps)", t, detail))

    for count in sorted({1, threads, 2 * threads}):
        other = ctranslate2.models.Whisper(str(ct2), device="cpu", compute_type="int8", intra_threads=count)
        t, _ = _best(lambda other=other: other.generate(
            other.encode(view(features)), [prompt], beam_size=beam_size, suppress_tokens=engine._suppress), repeat=2)
        rows.append((f"encoder + beam-{beam_size} decoder, {count} threads", t, ""))
    batch = np.concatenate([log_mel_features([w]) for w in joined[:4]])
    t_one, _ = _best(lambda: [model.generate(model.encode(view(batch[i : i + 1])), [prompt], beam_size=beam_size)
                              for i in range(len(batch))], repeat=1)
    t_all, _ = _best(lambda: model.generate(model.encode(view(batch)), [prompt] * len(batch), beam_size=beam_size), repeat=1)
    rows.append((f"{len(batch)} windows one at a time (encoder + decoder)", t_one, ""))
    rows.append((f"{len(batch)} windows in one CTranslate2 batch", t_all, f"{t_one / t_all:.2f}x"))
    some = windows[:4]
    t_batch, _ = _best(lambda: engine._decode_windows(some, beam_size, options), repeat=1)
    chunks = engine._split(some)
    t_side, _ = _best(lambda: engine._map(lambda chunk: engine._decode_windows(chunk, beam_size, options), chunks), repeat=1)
    rows.append((f"engine: {len(some)} windows as one batch on one worker", t_batch, "encoder, decoder, alignment"))
    rows.append((f"engine: {len(some)} windows as {len(chunks)} batches side by side", t_side,
                 f"{engine.workers} workers x {per_worker} threads, {t_batch / t_side:.2f}x"))

    print(f"{'stage':<52} {'seconds':>8}  notes")
    print("-" * 110)
    for name, seconds, note in rows:
        print(f"{name:<52} {seconds:>8.2f}  {note}")
    print(f"load average at the end {os.getloadavg()[0]:.2f} (figures are the fastest of up to 3 runs)")
