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
from training.calibration import reliability_plot  # noqa: E402
from training.word_checks import (  # noqa: E402
    MAX_MARKED_SHARE,
    CheckedTranscript,
    WordScorer,
    choose_threshold,
    fallback_scores,
    fit_checks,
    mark_point,
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


def transcribe(model: Path, clips: list[tuple[str, str, str]], dump: Path) -> list[CheckedTranscript]:
    """Each clip's words checked against its reference; ``dump`` gets one JSON line per clip (key, reference,
    words as [text, start, end, probability, tokens]) so that ``--words`` measures again without decoding."""
    engine = load_engine(model)
    samples = []
    with dump.open("w") as out:
        for start in tqdm(range(0, len(clips), BATCH), desc=f"{engine.version} with words", unit="batch"):
            batch = clips[start : start + BATCH]
            results = engine.transcribe([decode(path) for _, path, _ in batch], words=True)
            for (key, _, reference), result in zip(batch, results, strict=True):
                raw = [[w.text, w.start, w.end, w.probability, w.tokens] for w in result.words]
                words = words_from_meta(raw)
                if words:
                    samples.append(CheckedTranscript.from_words(key, words, reference))
                out.write(json.dumps({"key": key, "reference": reference, "words": raw}, ensure_ascii=False) + "\n")
    return samples


def read_dump(path: Path) -> list[CheckedTranscript]:
    samples = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        words = words_from_meta(row["words"])
        if words:
            samples.append(CheckedTranscript.from_words(row["key"], words, row["reference"]))
    return samples


def session_of(key: str) -> str:
    return key.split("/", 1)[0]


def held_out_marks(samples: list[CheckedTranscript], learnt: bool) -> dict[str, float]:
    """Marks chosen on one half of the sessions and judged on the other, both ways; word-weighted means.
    ``learnt``: P(wrong) from a scorer fitted on the choosing half; else the model's own doubt."""
    sessions = sorted({session_of(s.key) for s in samples})
    halves = [set(sessions[0::2]), set(sessions[1::2])]
    caught = marked = words = wrong = 0
    thresholds = []
    for chooser, judged in ((0, 1), (1, 0)):
        choose_on = [s for s in samples if session_of(s.key) in halves[chooser]]
        judge_on = [s for s in samples if session_of(s.key) in halves[judged]]
        scorer = WordScorer.fit(choose_on) if learnt else None

        def pairs(group: list[CheckedTranscript], seen: bool, scorer: WordScorer | None = scorer) -> list[tuple[float, bool]]:
            return [pair for s in group for pair in zip(
                (scorer.learnt_scores(s) if seen else scorer.scores(s.words, s.probabilities, s.tokens, s.starts, s.ends)) if scorer
                else fallback_scores(s.probabilities), s.wrong, strict=True)]

        threshold = choose_threshold(pairs(choose_on, seen=True)).threshold
        judged_pairs = pairs(judge_on, seen=False)
        point = mark_point(judged_pairs, threshold)
        n_wrong = sum(bad for _, bad in judged_pairs)
        caught += point.recall * n_wrong
        marked += point.marked_share * len(judged_pairs)
        words += len(judged_pairs)
        wrong += n_wrong
        thresholds.append(threshold)
    return {"recall": caught / wrong, "marked_share": marked / words, "thresholds": thresholds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--manifest", type=Path, help="a dataset manifest (audio_path, transcript, segment_key)")
    source.add_argument("--references", type=Path, help="a JSON of segment key -> reference (with --recordings)")
    source.add_argument("--words", type=Path, help="an earlier run's words.jsonl: measure again without decoding")
    parser.add_argument("--recordings", type=Path, help="the Habla recordings dir the keys are relative to")
    parser.add_argument("--model", type=Path, default=None, help="a CTranslate2 Whisper dir (default: the packaged whisper-base)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.references and not args.recordings:
        parser.error("--references needs --recordings")
    if args.model is None and not args.words:
        from ml_backend.whisper_files import assemble_packaged_whisper_base

        args.model = assemble_packaged_whisper_base()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.words:
        samples, clips = read_dump(args.words), None
    else:
        clips = clips_from(args)
        samples = transcribe(args.model, clips, args.out / "words.jsonl")
    own = held_out_marks(samples, learnt=False)
    learnt = held_out_marks(samples, learnt=True)
    fit = fit_checks(samples)
    # The figure `habla-ls status` shows: fitted on every clip, each word scored without its own verdict.
    on_all = mark_point([pair for s in samples for pair in zip(fit.learnt_scores(s), s.wrong, strict=True)], fit.threshold)
    summary = {
        "model": str(args.model), "clips": len(samples), "words": fit.words, "wrong": fit.wrong,
        "own_probability": own, "learnt": learnt, "folds_recall": fit.folds_recall,
        "folds_marked_share": fit.folds_marked_share, "calibration_error": fit.folds_error,
        "status_recall": on_all.recall, "status_marked_share": on_all.marked_share,
        "reliability": fit.reliability, "seconds": round(time.perf_counter() - started, 1),
        "load_average": os.getloadavg(),
    }
    (args.out / "word_checks.json").write_text(json.dumps(summary, indent=1) + "\n")
    reliability_plot(fit.reliability, fit.folds_error, fit.words, args.out / "word_checks_reliability.png", "P(word wrong), out of fold")
    lines = [
        f"# Word checks: {len(samples)} clips, {fit.words} words, {fit.wrong} wrong ({100 * fit.wrong / fit.words:.1f} %)",
        "",
        "Marks chosen on one half of the sessions, judged on the other (both ways); at most "
        f"{100 * MAX_MARKED_SHARE:.0f} % of the words marked.",
        "",
        "| word score | wrong words marked | all words marked | thresholds (each half) |",
        "|---|---:|---:|---|",
    ]
    for name, marks in (("the model's own probability", own), ("P(wrong) learnt from corrections", learnt)):
        lines.append(f"| {name} | {100 * marks['recall']:.1f} % | {100 * marks['marked_share']:.1f} % | "
                     f"{', '.join(f'{t:.3f}' for t in marks['thresholds'])} |")
    lines += [
        "",
        f"Out of fold ({len(samples)} clips in 5 folds): {100 * fit.folds_recall:.1f} % of the wrong words marked with "
        f"{100 * fit.folds_marked_share:.1f} % of the words; calibration error of P(wrong) {fit.folds_error:.3f}. "
        f"{summary['seconds']:.0f} s, load average {summary['load_average'][0]:.2f}.",
        "",
        f"Fitted on every clip, each word scored without its own verdict and transcript (what `habla-ls status` "
        f"reports): {100 * on_all.recall:.1f} % of the wrong words marked with {100 * on_all.marked_share:.1f} % of "
        f"the words, threshold {fit.threshold:.3f}.",
    ]
    text = "\n".join(lines) + "\n"
    (args.out / "word_checks.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
