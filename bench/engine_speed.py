"""Backend engine vs a plain transformers ASR pipeline, on the same clips and the same whisper-base weights.

    .venv/bin/python bench/engine_speed.py [--clips 60] [--beam-size 5]

60 Spanish sentences spoken by espeak-ng; the real multilingual whisper-base from the `models` extra,
served by our engine from its CTranslate2 form (faster-whisper int8, short clips packed into 30-s
windows) and by ``transformers.pipeline("automatic-speech-recognition")`` from its transformers
conversion (what most Label Studio ASR backends run: one task at a time, fp32). Each contender runs in
its own subprocess so that peak RSS is its own. Throughput counts decoding only (model load is shown
apart); WER against the sentences tells whether speed was bought with accuracy.
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
    from habla_ls.synth.espeak import synthesize
    from habla_ls.synth.sentences import sentence_set
    from ml_backend.audio import encode_wav

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
        started = time.perf_counter()
        texts = [t.text for t in engine.transcribe(audio, beam_size=beam_size)]
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
    wall = time.perf_counter() - started
    return {
        "name": name,
        "audio_seconds": sum(r["seconds"] for r in rows),
        "wall_seconds": wall,
        "load_seconds": loaded,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "texts": texts,
    }


def wer(references: list[str], hypotheses: list[str]) -> float:
    import jiwer

    norm = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()])
    return float(jiwer.wer([norm(r) for r in references], [norm(h) or "<empty>" for h in hypotheses]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=60, help="number of espeak-ng clips (default 60)")
    parser.add_argument("--beam-size", type=int, default=5, help="engine beam size (the served default is 5)")
    parser.add_argument("--only", choices=list(CONTENDERS), action="append", help="run only these contenders")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--clips-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    ct2, hf = ensure_models()
    if args.child:
        print(json.dumps(run_contender(args.child, args.clips_file, ct2, hf, args.beam_size)))
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
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["wer"] = wer([r["text"] for r in rows], result["texts"])
            results.append(result)
            # Printed at once so that a long or interrupted run still leaves its figures.
            print(f"  {name}: {result['audio_seconds'] / result['wall_seconds']:.2f} audio s/wall s, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB, WER {result['wer']:.3f}", flush=True)

    pipeline_speed = next((r["audio_seconds"] / r["wall_seconds"] for r in results if r["name"] == "pipeline"), None)
    header = f"{'contender':<58} {'audio s/wall s':>14} {'vs pipeline':>11} {'peak RSS MB':>11} {'load s':>7} {'WER':>6}"
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        speed = r["audio_seconds"] / r["wall_seconds"]
        ratio = f"{speed / pipeline_speed:.2f}x" if pipeline_speed else "-"
        label = CONTENDERS[r["name"]] + (f" (beam {args.beam_size})" if r["name"].startswith("engine") else " (greedy)")
        print(f"{label:<58} {speed:>14.2f} {ratio:>11} {r['peak_rss_mb']:>11.0f} {r['load_seconds']:>7.1f} {r['wer']:>6.3f}")


if __name__ == "__main__":
    main()
