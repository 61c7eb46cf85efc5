"""How far is a CTranslate2 export (int8, float16) from its transformers model, on natural-sounding audio?

Two tables, one row per (version, clip set):

1. **The export check** of ``habla-ls models export``: the transformers model and each export on the same
   features with the same *greedy* decoding (``training/export.py``), so that a gap can only come from the
   conversion or the quantization. Greedy decoding makes this a severe test: one flipped token changes the
   rest of the sentence.
2. **As served**: each export transcribed the way the backend and Habla run it (faster-whisper's
   ``transcribe``: beam 5, packed windows, temperature 0), the float16 export computed in float32 (the
   transformers weights to 11 bits; table 1 shows it gives the transformers transcripts) against int8.

Defaults: the two versions of the accent benchmark (``bench/quality/run.py``): the packaged whisper-base and
the LoRA fine-tune, on the Kokoro corpus' accented and standard test clips (40 each).

    .venv/bin/python bench/export_check.py
    .venv/bin/python bench/export_check.py --version-dir demo-data/home/models/habla-v1 \
        --clips demo-data/home/datasets/manifest.jsonl --limit 40
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from ml_backend.audio import AudioError, decode  # noqa: E402
from ml_backend.registry import HF_SUBDIR, read_card  # noqa: E402
from training.deliver import ct2_subdir  # noqa: E402
from training.export import export_model  # noqa: E402
from training.export_check import INT8_TOLERANCE  # noqa: E402
from training.manifest import read_manifest  # noqa: E402
from training.metrics import corpus_wer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
QUALITY_RUN = RESULTS / "quality-run" / "models"
CORPUS = RESULTS / "quality-corpus"
DEFAULT_VERSIONS = (QUALITY_RUN / "whisper-base-v1", QUALITY_RUN / "accent-v1")
DEFAULT_CLIPS = (CORPUS / "test_accent" / "manifest.jsonl", CORPUS / "test_standard" / "manifest.jsonl")


def weights_dir(version_dir: Path) -> tuple[Path, Path | None]:
    """(the dir export_model takes, the base dir a LoRA adapter needs)."""
    card = read_card(version_dir)
    if (version_dir / "lora").is_dir():
        parent = version_dir.parent / str(card.get("parent"))
        return version_dir / "lora", parent / HF_SUBDIR
    return version_dir / HF_SUBDIR, None


def load_clips(manifest: Path, limit: int) -> tuple[list, list[str]]:
    rows, problems = read_manifest(manifest)
    for line in problems:
        print(f"  {line}", file=sys.stderr)
    clips, refs = [], []
    for row in rows[:limit]:
        try:
            clips.append(decode(row["audio_path"]))
            refs.append(row["transcript"])
        except AudioError as exc:
            print(f"  {row['audio_path']}: {exc}; left out", file=sys.stderr)
    return clips, refs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version-dir", type=Path, action="append", help="a registered version dir (repeatable)")
    parser.add_argument("--clips", type=Path, action="append", help="a manifest of clips to check on (repeatable)")
    parser.add_argument("--limit", type=int, default=40, help="clips per manifest")
    parser.add_argument("--served-only", action="store_true", help="only table 2 (reuses earlier exports)")
    parser.add_argument("--out", type=Path, default=RESULTS / "export_check.json")
    args = parser.parse_args(argv)
    versions = args.version_dir or list(DEFAULT_VERSIONS)
    manifests = args.clips or list(DEFAULT_CLIPS)
    for path in [*versions, *manifests]:
        if not path.exists():
            parser.error(f"{path}: not found (the defaults come from bench/quality/run.py)")

    exports_dir = args.out.parent / "export_check"
    clip_sets = {m.parent.name if m.name.startswith("manifest") else m.stem: load_clips(m, args.limit) for m in manifests}
    rows = []
    for version_dir in [] if args.served_only else versions:
        model_dir, base_dir = weights_dir(version_dir)
        for set_name, (clips, refs) in clip_sets.items():
            started = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="export-check-", ignore_cleanup_errors=True) as tmp:
                # A generous tolerance: this run measures the gap, it does not gate on it.
                result = export_model(
                    model_dir, Path(tmp), quantizations=("int8", "float16"), base_dir=base_dir,
                    check_clips=clips, check_references=refs, tolerance=1.0, int8_tolerance=1.0,
                )
                keep = exports_dir / version_dir.name
                if not keep.is_dir():  # the exports, for table 2
                    keep.parent.mkdir(parents=True, exist_ok=True)
                    Path(tmp).rename(keep)
            check = result.check
            assert check is not None
            rows.append({
                "version": version_dir.name, "clips": set_name, "n": check.clips,
                "wer_transformers": check.wer_transformers, "wer_ct2": check.wer_ct2,
                "differing": check.differing, "seconds": round(time.perf_counter() - started, 1),
            })
            print(f"{version_dir.name} / {set_name}: transformers {check.wer_transformers:.4f}, "
                  + ", ".join(f"{q} {w:.4f}" for q, w in check.wer_ct2.items()), flush=True)

    print()
    print("| version | clips | n | transformers | float16 | int8 | int8 gap (points) | clips changed by int8 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        gap = 100 * (row["wer_ct2"]["int8"] - row["wer_transformers"])
        print(f"| {row['version']} | {row['clips']} | {row['n']} | {row['wer_transformers']:.4f} | "
              f"{row['wer_ct2']['float16']:.4f} | {row['wer_ct2']['int8']:.4f} | {gap:+.2f} | "
              f"{100 * row['differing']['int8']:.0f} % |")
    print(f"\n(the export command allows int8 {INT8_TOLERANCE:.2f} by default; float16 0.01)")

    for version_dir in versions:
        if not (exports_dir / version_dir.name).is_dir():
            model_dir, base_dir = weights_dir(version_dir)
            export_model(model_dir, exports_dir / version_dir.name, quantizations=("int8", "float16"), base_dir=base_dir)
    served = served_table(versions, exports_dir, clip_sets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"greedy_check": rows, "as_served": served}, indent=2))
    return 0


def served_table(versions: list[Path], exports_dir: Path, clip_sets: dict[str, tuple[list, list[str]]]) -> list[dict]:
    from ml_backend.decoding import DecodeOptions
    from ml_backend.loading import load_engine

    options = DecodeOptions(temperatures=(0.0,))  # deterministic: no sampling fallback
    rows = []
    for version_dir in versions:
        export = exports_dir / version_dir.name
        engines = {
            "float16 (fp32 compute)": load_engine(export / ct2_subdir("float16"), compute_type="float32", options=options),
            "int8": load_engine(export / ct2_subdir("int8"), compute_type="int8", options=options),
        }
        for set_name, (clips, refs) in clip_sets.items():
            texts = {name: [t.text for t in engine.transcribe(clips, beam_size=5)] for name, engine in engines.items()}
            wers = {name: corpus_wer(refs, hyps) for name, hyps in texts.items()}
            a, b = texts.values()
            rows.append({"version": version_dir.name, "clips": set_name, "n": len(clips), "wer": wers,
                         "differing": sum(x != y for x, y in zip(a, b, strict=True)) / max(len(a), 1)})
            print(f"served {version_dir.name} / {set_name}: " + ", ".join(f"{k} {v:.4f}" for k, v in wers.items()), flush=True)
    print()
    print("| version | clips | n | float16 (fp32 compute) | int8 | int8 gap (points) | clips changed |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        f16, i8 = row["wer"]["float16 (fp32 compute)"], row["wer"]["int8"]
        print(f"| {row['version']} | {row['clips']} | {row['n']} | {f16:.4f} | {i8:.4f} | {100 * (i8 - f16):+.2f} | "
              f"{100 * row['differing']:.0f} % |")
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
