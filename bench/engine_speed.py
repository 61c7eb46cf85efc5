"""Backend engine vs a plain transformers ASR pipeline, on the same clips and the same whisper-base weights.

    .venv/bin/python bench/engine_speed.py [--clips 60] [--beam-size 5] [--only engine --only engine-unpacked]
    .venv/bin/python bench/engine_speed.py --profile     # where one packed window's time goes
    .venv/bin/python bench/engine_speed.py --latency     # one task per /predict through the real server

60 Spanish sentences spoken by espeak-ng; the real multilingual whisper-base from the `models` extra,
served by our engine from its CTranslate2 form (faster-whisper int8, short clips packed into 30-s
windows) and by ``transformers.pipeline("automatic-speech-recognition")`` from its transformers
conversion (what most Label Studio ASR backends run: one task at a time, fp32). Each contender runs in
its own subprocess so that peak RSS is its own. Throughput counts decoding only (model load is shown
apart); WER against the sentences tells whether speed was bought with accuracy. When both engine
contenders ran, a per-clip table shows how packing changes each clip's text against decoding it alone.
Every figure is printed with the 1-min load average: on a shared machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CONTENDERS = {
    "engine": "backend engine: faster-whisper int8, packed windows",
    "engine-unpacked": "backend engine: faster-whisper int8, one clip per window",
    "pipeline": "transformers ASR pipeline, fp32, one clip at a time",
}


def make_clips(count: int, out_dir: Path) -> list[dict]:
    from ml_backend.audio import encode_wav
    from synth.espeak import synthesize
    from synth.sentences import sentence_set

    sentences = [s.text for name in ("everyday", "classroom", "regression") for s in sentence_set(name)][:count]
    rows = []
    for i, text in enumerate(sentences):
        path = out_dir / f"clip_{i:03d}.wav"
        samples = synthesize(text)
        path.write_bytes(encode_wav(samples))
        rows.append({"path": str(path), "text": text, "seconds": len(samples) / 16000})
    return rows


def ensure_models() -> tuple[Path, Path]:
    from ml_backend.whisper_files import assemble_packaged_whisper_base, cache_dir
    from training.ct2_import import convert_ct2_dir

    ct2 = assemble_packaged_whisper_base()
    hf = cache_dir() / "whisper-base-hf"
    if not (hf / "model.safetensors").is_file():
        convert_ct2_dir(ct2, hf)
    return ct2, hf


def run_contender(name: str, clips_file: Path, ct2: Path, hf: Path, beam_size: int) -> dict:
    """Runs inside the child process."""
    from ml_backend.audio import decode

    rows = json.loads(clips_file.read_text())
    audio = [decode(r["path"]) for r in rows]
    started = time.perf_counter()
    if name.startswith("engine"):
        from ml_backend.engine import DecodeOptions, load_engine

        engine = load_engine(ct2, device="cpu", options=DecodeOptions(pack=name == "engine"))
        loaded = time.perf_counter() - started
        engine.transcribe(audio[:1], beam_size=beam_size)  # warm-up
        engine.counters.clear()
        started = time.perf_counter()
        transcripts = engine.transcribe(audio, beam_size=beam_size)
        texts = [t.text for t in transcripts]
        extra = {"window_clips": [t.window_clips for t in transcripts], "counters": dict(engine.counters)}
    else:
        import torch
        from transformers import pipeline

        torch.set_num_threads(os.cpu_count() or 1)
        asr = pipeline("automatic-speech-recognition", model=str(hf), device="cpu")
        kwargs = {"language": "es", "task": "transcribe"}
        loaded = time.perf_counter() - started
        asr({"raw": audio[0], "sampling_rate": 16000}, generate_kwargs=kwargs)  # warm-up
        started = time.perf_counter()
        texts = [asr({"raw": a, "sampling_rate": 16000}, generate_kwargs=kwargs)["text"] for a in audio]
        extra = {}
    wall = time.perf_counter() - started
    return {
        "name": name,
        "audio_seconds": sum(r["seconds"] for r in rows),
        "wall_seconds": wall,
        "load_seconds": loaded,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "texts": texts,
        **extra,
    }


def _norm(text: str) -> str:
    import jiwer

    return jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])(text)


def wer(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    return float(jiwer.wer([_norm(r) for r in references], [_norm(h) or "<empty>" for h in hypotheses]))


def packing_table(rows: list[dict], packed: dict, alone: dict) -> None:
    """Per clip: WER decoded alone and packed, whether packing changed the (normalised) text and how
    the clip was decoded in the packed run (sharing a window of n, or again alone after a bad share)."""
    print()
    print("Packing vs one clip per window, per clip (text compared after lower-casing and removing punctuation)")
    header = f"{'#':>3} {'s':>5} {'WER alone':>9} {'WER packed':>10} {'changed':>7} {'window':>7}  packed text"
    print(header)
    print("-" * 100)
    changed = better = worse = 0
    for i, row in enumerate(rows):
        a, p = alone["texts"][i], packed["texts"][i]
        wa, wp = wer([row["text"]], [a]), wer([row["text"]], [p])
        differs = _norm(a) != _norm(p)
        changed += differs
        better += wp < wa
        worse += wp > wa
        window = packed["window_clips"][i]
        how = f"{window} clips" if window > 1 else "alone"
        print(f"{i:>3} {row['seconds']:>5.1f} {wa:>9.2f} {wp:>10.2f} {'yes' if differs else '':>7} {how:>7}  {p[:60]}")
    references = [r["text"] for r in rows]
    print("-" * 100)
    print(f"packing changed {changed} of {len(rows)} texts ({better} closer to the reference, {worse} further, "
          f"{len(rows) - better - worse} as close); WER alone {wer(references, alone['texts']):.3f}, "
          f"packed {wer(references, packed['texts']):.3f}; empty texts alone {sum(not t.strip() for t in alone['texts'])}, "
          f"packed {sum(not t.strip() for t in packed['texts'])}; engine counters {packed.get('counters')}")


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
    from ml_backend.engine import (
        audio_key,
        cpu_layout,
        cpu_threads,
        load_engine,
        log_mel_features,
        plan_windows,
    )

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


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), None elsewhere."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _start_backend(ct2: Path, home: Path, beam_size: int) -> tuple[subprocess.Popen, str]:
    """The real backend (uvicorn, the served defaults but the beam) on a free port of 127.0.0.1."""
    import httpx

    from sync.ls_server import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "BACKEND_BEARER_TOKEN")}
    env.update(HABLA_LS_HOME=str(home), HABLA_LS_MODEL=str(ct2), HABLA_LS_DEVICE="cpu", HABLA_LS_BEAM_SIZE=str(beam_size),
               LABEL_STUDIO_URL="http://127.0.0.1:9")
    log = open(home / "backend.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "ml_backend.server:app_factory", "--host", "127.0.0.1",
         "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"backend exited: {(home / 'backend.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).json().get("status") == "UP":
                return process, url
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit("backend did not come up in 120 s")


def latency_table(count: int, beams: list[int]) -> None:
    """p50/p95 of one /predict carrying one 3-5 s task, as Label Studio sends it when a task opens without
    a prediction: each clip new to the backend (cold), then the same clips again (answered from the
    backend's prediction cache, what every later opening of the task costs)."""
    import hashlib

    import httpx
    import numpy as np

    ct2, _hf = ensure_models()
    with tempfile.TemporaryDirectory(prefix="engine-latency-") as tmp:
        tmp_path = Path(tmp)
        rows = [r for r in make_clips(3 * count, tmp_path) if 3.0 <= r["seconds"] <= 5.0][:count]
        load = os.getloadavg()[0]
        print(f"{len(rows)} espeak-ng clips of 3-5 s, one task per /predict, real backend (uvicorn), whisper-base "
              f"int8; {os.cpu_count()} CPU cores; load average {load:.2f}", flush=True)
        table = []
        for beam in beams:
            home = tmp_path / f"home-beam{beam}"
            (home / "archive").mkdir(parents=True)
            tasks = []
            for i, row in enumerate(rows):
                wav = Path(row["path"]).read_bytes()
                sha = hashlib.sha256(wav).hexdigest()
                target = home / "archive" / sha[:2] / f"{sha}.wav"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wav)
                tasks.append({"id": i + 1, "data": {"audio": f"/data/upload/{i + 1}.wav", "sha256": sha}})
            process, url = _start_backend(ct2, home, beam)
            try:
                with httpx.Client(timeout=120) as client:
                    client.post(url + "/predict", json={"tasks": [tasks[0]]}).raise_for_status()  # warm-up
                    for kind in ("cold", "cached"):
                        times = []
                        for task in tasks[1:] if kind == "cold" else tasks:
                            started = time.perf_counter()
                            client.post(url + "/predict", json={"tasks": [task]}).raise_for_status()
                            times.append(time.perf_counter() - started)
                        table.append((beam, kind, len(times), float(np.percentile(times, 50)),
                                      float(np.percentile(times, 95)), os.getloadavg()[0]))
                        print(f"  beam {beam}, {kind}: p50 {table[-1][3]:.3f} s, p95 {table[-1][4]:.3f} s", flush=True)
            finally:
                os.killpg(process.pid, 15)
                process.wait(30)
    header = f"{'beam':>4} {'prediction':>10} {'requests':>8} {'p50 s':>7} {'p95 s':>7} {'loadavg':>7}"
    print()
    print(header)
    print("-" * len(header))
    for beam, kind, n, p50, p95, after in table:
        print(f"{beam:>4} {kind:>10} {n:>8} {p50:>7.3f} {p95:>7.3f} {after:>7.2f}")
    print("cold: the clip is new to the backend (decoded); cached: asked again (the backend's prediction cache)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=60, help="number of espeak-ng clips (default 60)")
    parser.add_argument("--beam-size", type=int, default=5, help="engine beam size (the served default is 5)")
    parser.add_argument("--only", choices=list(CONTENDERS), action="append", help="run only these contenders")
    parser.add_argument("--profile", action="store_true", help="profile one packed window of the engine instead")
    parser.add_argument("--latency", action="store_true",
                        help="p50/p95 of /predict for one 3-5 s task through the real server instead")
    parser.add_argument("--latency-beams", default="5,1", help="beam sizes for --latency (default 5,1)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--clips-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.latency:
        latency_table(args.clips if args.clips != 60 else 20, [int(b) for b in args.latency_beams.split(",")])
        return
    ct2, hf = ensure_models()
    if args.child:
        print(json.dumps(run_contender(args.child, args.clips_file, ct2, hf, args.beam_size)))
        return
    if args.profile:
        profile_window(ct2, args.beam_size, args.clips)
        return

    with tempfile.TemporaryDirectory(prefix="engine-speed-") as tmp:
        rows = make_clips(args.clips, Path(tmp))
        clips_file = Path(tmp) / "clips.json"
        clips_file.write_text(json.dumps(rows))
        total = sum(r["seconds"] for r in rows)
        load = os.getloadavg()[0]
        if load > (os.cpu_count() or 1):
            print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other work will distort the figures")
        print(f"{len(rows)} espeak-ng clips, {total:.1f} s of audio (mean {total / len(rows):.1f} s); "
              f"{os.cpu_count()} CPU cores; whisper-base", flush=True)
        results = []
        for name in args.only or list(CONTENDERS):
            cmd = [sys.executable, __file__, "--child", name, "--clips-file", str(clips_file), "--beam-size", str(args.beam_size)]
            # How busy the rest of the machine was meanwhile: all busy CPU time minus the contender's own.
            load_before, busy_before = os.getloadavg()[0], busy_cpu_seconds()
            own_before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            own_after, busy_after = resource.getrusage(resource.RUSAGE_CHILDREN), busy_cpu_seconds()
            if out.returncode != 0:
                print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["wer"] = wer([r["text"] for r in rows], result["texts"])
            own = (own_after.ru_utime + own_after.ru_stime) - (own_before.ru_utime + own_before.ru_stime)
            others = max(0.0, (busy_after - busy_before - own) / (time.perf_counter() - started)) if busy_before is not None else None
            result["load_average"], result["other_cores"] = load_before, others
            results.append(result)
            # Printed at once so that a long or interrupted run still leaves its figures.
            busy = f", other processes used {others:.2f} cores meanwhile" if others is not None else ""
            print(f"  {name}: {result['audio_seconds'] / result['wall_seconds']:.2f} audio s/wall s, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB, WER {result['wer']:.3f}, "
                  f"load average before {load_before:.2f}{busy}", flush=True)

    by_name = {r["name"]: r for r in results}
    if "engine" in by_name and "engine-unpacked" in by_name:
        packing_table(rows, by_name["engine"], by_name["engine-unpacked"])
    pipeline_speed = next((r["audio_seconds"] / r["wall_seconds"] for r in results if r["name"] == "pipeline"), None)
    header = (f"{'contender':<58} {'audio s/wall s':>14} {'vs pipeline':>11} {'peak RSS MB':>11} {'load s':>7} {'WER':>6} "
              f"{'loadavg':>7} {'others':>6}")
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        speed = r["audio_seconds"] / r["wall_seconds"]
        ratio = f"{speed / pipeline_speed:.2f}x" if pipeline_speed else "-"
        label = CONTENDERS[r["name"]] + (f" (beam {args.beam_size})" if r["name"].startswith("engine") else " (greedy)")
        others = f"{r['other_cores']:>6.2f}" if r["other_cores"] is not None else f"{'-':>6}"
        print(f"{label:<58} {speed:>14.2f} {ratio:>11} {r['peak_rss_mb']:>11.0f} {r['load_seconds']:>7.1f} {r['wer']:>6.3f} "
              f"{r['load_average']:>7.2f} {others}")
    print("loadavg: 1-min load average before the contender started; others: cores other processes kept busy "
          "while it ran (0 on a quiet machine)")


if __name__ == "__main__":
    main()
