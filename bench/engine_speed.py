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

from bench.engine_speed_clips import ensure_models, make_clips  # noqa: E402
from bench.engine_speed_latency import latency_table  # noqa: E402
from bench.engine_speed_profile import profile_window  # noqa: E402

CONTENDERS = {
    "engine": "backend engine: faster-whisper int8, packed windows",
    "engine-unpacked": "backend engine: faster-whisper int8, one clip per window",
    "pipeline": "transformers ASR pipeline, fp32, one clip at a time",
}


def run_contender(name: str, clips_file: Path, ct2: Path, hf: Path, beam_size: int) -> dict:
    """Runs inside the child process."""
    from ml_backend.audio import decode

    rows = json.loads(clips_file.read_text())
    audio = [decode(r["path"]) for r in rows]
    started = time.perf_counter()
    if name.startswith("engine"):
        from ml_backend.decoding import DecodeOptions
        from ml_backend.loading import load_engine

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


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), None elsewhere."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


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
