"""How well the labelling page's word checks point at the wrong words, and how honest its 'likely wrong' is.

Transcribes clips with known references the way a round does (the serving engine with its defaults:
packed windows, beam 5, timed words), marks the words below a probability threshold, and measures:

- recall (share of the wrong words marked) against marked share (share of all words marked). The
  threshold is chosen on one half of the clips (halves by session) and measured on the other half, both
  ways round: a figure measured on the clips that chose it would flatter it;
- the calibration of P(word wrong) (training.word_checks: isotonic, out of fold over 5 folds of clips):
  expected calibration error and a reliability plot.

    .venv/bin/python bench/word_checks.py --references bench/results/term-run/pool/references.json \\
        --recordings bench/results/term-run/pool/recordings
    .venv/bin/python bench/word_checks.py --manifest some/manifest.jsonl --model path/to/ct2

Writes ``--out``/word_checks.{json,md} and word_checks_reliability.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tqdm import tqdm  # noqa: E402

from ml_backend.audio import decode  # noqa: E402
from ml_backend.loading import load_engine  # noqa: E402
from sync.page_checks import words_from_meta  # noqa: E402
from training.word_checks import (  # noqa: E402
    MAX_MARKED_SHARE,
    CheckedTranscript,
    choose_threshold,
    fit_calibration,
    mark_point,
    reliability_plot,
    wrong_words,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "word_checks"
BATCH = 8  # clips per engine call, as a round transcribes


def clips_from(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(key, audio path, reference) of every clip."""
    if args.manifest:
        rows = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
        return [(str(r.get("segment_key") or r["audio_path"]), r["audio_path"], r["transcript"]) for r in rows]
    references = json.loads(args.references.read_text())
    return [(key, str(args.recordings / key), text) for key, text in sorted(references.items())]


def transcribe(model: Path, clips: list[tuple[str, str, str]], dump: Path | None = None) -> list[CheckedTranscript]:
    """Each clip's words checked against its reference; ``dump`` gets one JSON line per clip (key, reference,
    words as [text, start, end, probability], wrong flags) to study other word scores without decoding again."""
    engine = load_engine(model)
    samples = []
    out = dump.open("w") if dump else None
    for start in tqdm(range(0, len(clips), BATCH), desc=f"{engine.version} with words", unit="batch"):
        batch = clips[start : start + BATCH]
        results = engine.transcribe([decode(path) for _, path, _ in batch], words=True)
        for (key, _, reference), result in zip(batch, results, strict=True):
            words = words_from_meta([[w.text, w.start, w.end, w.probability] for w in result.words])
            if words:
                wrong = wrong_words([w.text for w in words], reference)
                samples.append(CheckedTranscript(key, tuple(w.probability for w in words), tuple(wrong)))
                if out:
                    out.write(json.dumps({"key": key, "reference": reference, "wrong": wrong,
                                          "words": [[w.text, w.start, w.end, w.probability] for w in words]},
                                         ensure_ascii=False) + "\n")
    if out:
        out.close()
    return samples


def session_of(key: str) -> str:
    return key.split("/", 1)[0]


def held_out_marks(samples: list[CheckedTranscript]) -> dict[str, float]:
    """Threshold chosen on one half of the sessions, measured on the other, both ways; word-weighted means."""
    sessions = sorted({session_of(s.key) for s in samples})
    halves = [set(sessions[0::2]), set(sessions[1::2])]
    recall_sum = share_sum = words = wrong = 0.0
    thresholds = []
    for chooser, judged in ((0, 1), (1, 0)):
        choose_on = [s for s in samples if session_of(s.key) in halves[chooser]]
        judge_on = [s for s in samples if session_of(s.key) in halves[judged]]
        threshold = choose_threshold(choose_on).threshold
        point = mark_point(judge_on, threshold)
        n_words = sum(len(s.wrong) for s in judge_on)
        n_wrong = sum(sum(s.wrong) for s in judge_on)
        recall_sum += point.recall * n_wrong
        share_sum += point.marked_share * n_words
        words += n_words
        wrong += n_wrong
        thresholds.append(threshold)
    return {"recall": recall_sum / wrong, "marked_share": share_sum / words, "thresholds": thresholds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="a dataset manifest (audio_path, transcript, segment_key)")
    source.add_argument("--references", type=Path, help="a JSON of segment key -> reference (with --recordings)")
    parser.add_argument("--recordings", type=Path, help="the Habla recordings dir the keys are relative to")
    parser.add_argument("--model", type=Path, default=None, help="a CTranslate2 Whisper dir (default: the packaged whisper-base)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.references and not args.recordings:
        parser.error("--references needs --recordings")
    if args.model is None:
        from ml_backend.whisper_files import assemble_packaged_whisper_base

        args.model = assemble_packaged_whisper_base()
    started = time.perf_counter()
    clips = clips_from(args)
    args.out.mkdir(parents=True, exist_ok=True)
    samples = transcribe(args.model, clips, args.out / "words.jsonl")
    marks = held_out_marks(samples)
    everything = choose_threshold(samples)
    calibration = fit_calibration(samples)
    words = sum(len(s.wrong) for s in samples)
    wrong = sum(sum(s.wrong) for s in samples)
    summary = {
        "model": str(args.model), "clips": len(clips), "words": words, "wrong": wrong,
        "held_out": marks, "threshold_on_all": everything.threshold, "recall_on_all": everything.recall,
        "marked_share_on_all": everything.marked_share, "calibration_error": calibration.folds_error,
        "reliability": calibration.reliability, "seconds": round(time.perf_counter() - started, 1),
        "load_average": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "word_checks.json").write_text(json.dumps(summary, indent=1) + "\n")
    reliability_plot(calibration, args.out / "word_checks_reliability.png", "P(word wrong), out of fold")
    lines = [
        f"# Word checks: {len(clips)} clips, {words} words, {wrong} wrong ({100 * wrong / words:.1f} %)",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| wrong words marked (threshold chosen on the other half of the sessions) | {100 * marks['recall']:.1f} % |",
        f"| all words marked (same) | {100 * marks['marked_share']:.1f} % (limit {100 * MAX_MARKED_SHARE:.0f} %) |",
        f"| thresholds chosen on each half | {', '.join(f'{t:.3f}' for t in marks['thresholds'])} |",
        f"| calibration error of P(word wrong), out of fold | {calibration.folds_error:.3f} |",
        f"| seconds (load average {summary['load_average'][0]:.2f}) | {summary['seconds']:.0f} |",
    ]
    text = "\n".join(lines) + "\n"
    (args.out / "word_checks.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
