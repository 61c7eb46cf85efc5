"""The accent benchmark: fine-tune whisper-base on accented clips, report accent and standard WER.

Reads the corpora written by ``bench/quality/make_corpus.py`` (train/, test_accent/, test_standard/),
registers the offline whisper-base in a work home, trains with ``training.train.train`` (the same code
as ``habla-ls train``), then scores base and fine-tuned model with ``training.evaluate.evaluate`` (the
serving engine, CTranslate2 int8, beam 5) on the accented test set (other sentences, other vocabulary)
and on the standard-Spanish versions of the same sentences (the regression set), and applies the
promotion gate's two conditions.

Target (issue 4): accent WER down >= 30 % relative with <= 300 training clips, standard WER not worse
by more than 5 % relative.

    .venv/bin/python bench/quality/make_corpus.py
    .venv/bin/python bench/quality/run.py                      # LoRA, defaults below
    .venv/bin/python bench/quality/run.py --method full --epochs 3
    .venv/bin/python bench/quality/run.py --tag r32-lr5e-4 --lora-r 32 --learning-rate 5e-4

Writes ``bench/results/quality/quality[-TAG].json`` and ``.md`` (the table below, options, timings) and
appends every run to ``bench/results/quality/runs.jsonl``, so tuning attempts stay comparable. The base
model is evaluated once per work dir and test set; later runs reuse its figures from its model card.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ml_backend.registry import read_card  # noqa: E402
from training.dataset import read_manifest, split_id  # noqa: E402

DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "results" / "quality-corpus"
DEFAULT_WORK = Path(__file__).resolve().parents[1] / "results" / "quality-run"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "quality"
MAX_TRAIN_CLIPS = 300  # the budget of labelled clips


@dataclass(frozen=True)
class _CardFigures:
    """The two WERs of an earlier evaluation, read back from a model card."""

    test_wer: float
    regression_wer: float


def ensure_base(home: Path) -> str:
    """The packaged whisper-base registered in the work home (converted once, then reused)."""
    from training.ct2_import import ensure_packaged_base

    return ensure_packaged_base(home / "models")


def limit_train_manifest(manifest: Path, limit: int, home: Path, seed: int) -> tuple[Path, int]:
    """The train manifest, or a seeded subset of at most ``limit`` rows written into the work dir."""
    rows, problems = read_manifest(manifest)
    for line in problems:
        print(line, file=sys.stderr)
    if len(rows) <= limit:
        return manifest, len(rows)
    chosen = sorted(random.Random(seed).sample(rows, limit), key=lambda r: r["segment_key"])
    subset = home / f"train-{limit}-s{seed}.jsonl"
    subset.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen))
    return subset, limit


def standard_mix(corpus: Path, train_rows: list[dict[str, Any]], count: int, voices_offset: int = 1) -> list[dict[str, Any]]:
    """``count`` clips of the training sentences in standard Spanish (Kokoro), made once into ``<corpus>/train_standard``.

    Why: a LoRA tuned on accented speech alone can learn the accent and forget standard Spanish
    (DESIGN.md); keeping some standard speech of the same (training) sentences in the mix guards the
    regression set without touching its sentences. The voice is shifted from the accented clip's so a
    sentence's standard version comes from another speaker.
    """
    from habla_ls.synth.corpus import build_corpus, make_backend, plan_clips
    from habla_ls.synth.sentences import CLASSROOM

    spoken = {r["transcript"] for r in train_rows}
    sentences = [s for s in CLASSROOM if s.text in spoken]
    if count > len(sentences):
        raise SystemExit(f"--standard-mix {count}: only {len(sentences)} training sentences to speak")
    # Spread over the whole sentence list rather than its first lines.
    step = len(sentences) / count
    picked = [sentences[int(i * step)] for i in range(count)]
    backend = make_backend("kokoro")
    plans = plan_clips(picked, backend.voices, accented=False, name="train_standard", first_voice=voices_offset)
    result = build_corpus(corpus / "train_standard", plans, backend, description="standard training clips")
    rows, problems = read_manifest(result.manifest_path)
    for line in problems + result.failed:
        print(line, file=sys.stderr)
    return rows


def base_is_evaluated(home: Path, base: str, accent_manifest: Path, standard_manifest: Path, beam_size: int) -> bool:
    """Whether the base card already holds figures for exactly these two sets (so they need no re-run)."""
    card = read_card(home / "models" / base)
    accent_id = split_id(read_manifest(accent_manifest)[0])
    standard_id = split_id(read_manifest(standard_manifest)[0])
    return (
        card.get("test_split_id") == accent_id
        and card.get("regression_set_id") == standard_id
        and card.get("test_wer_normalised") is not None
        and card.get("regression_wer") is not None
        and card.get("eval_beam_size") == beam_size
    )


def summary_markdown(summary: dict[str, Any]) -> str:
    acc, std = summary["accent_wer"], summary["standard_wer"]
    options = summary["options"]
    lines = [
        f"# Accent benchmark{' (' + summary['tag'] + ')' if summary.get('tag') else ''}",
        "",
        f"whisper-base ({summary['base_version']}) vs {summary['version']} ({summary['method']}, r{options['lora_r']}, "
        f"alpha {options['lora_alpha']}, lr {options['learning_rate']}, {options['epochs']:g} epochs, batch "
        f"{options['batch_size']}, targets {','.join(options['lora_target_modules'])}). WER normalised, "
        f"serving engine (CTranslate2 int8), beam {summary['beam_size']}.",
        "",
        "| set | clips | base WER | fine-tuned WER | relative change |",
        "|---|---:|---:|---:|---:|",
        f"| test_accent (accented, other sentences) | {summary['accent_clips']} | {acc['base']:.3f} | {acc['fine_tuned']:.3f} | {acc['relative_change']:+.1%} |",
        f"| test_standard (same sentences, standard) | {summary['standard_clips']} | {std['base']:.3f} | {std['fine_tuned']:.3f} | {std['relative_change']:+.1%} |",
        "",
        f"- labelled clips used: {summary['labelled_clips']} ({summary['train_clips']} train + "
        f"{summary['validation_clips']} validation; {summary['standard_clips_in_training']} of them standard Spanish), "
        f"{summary['train_minutes_of_audio']} min of training audio",
        f"- training: {summary['training_seconds'] / 60:.1f} min ({summary['steps']} steps, {summary['epochs_run']:.1f} epochs; "
        f"best validation WER {summary['validation_wer']}); evaluation: {summary['evaluation_seconds'] / 60:.1f} min",
        f"- target (accent WER -30 % relative, standard within +5 %, <= 300 clips): **{'MET' if summary['target_met'] else 'not met'}**",
        f"- promotion gate: {'passes' if summary['gate']['passed'] else 'refuses'} ({'; '.join(summary['gate']['reasons'])})",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from training.evaluate import evaluate
    from training.promotion import check_gate
    from training.train import TrainOptions, train

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="make_corpus.py's --out")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="a HABLA_LS_HOME for the run")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop early (smoke runs)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=None, help="default: 2 x rank")
    parser.add_argument("--target-modules", default=None, help="LoRA target modules, comma-separated (default q_proj,v_proj)")
    parser.add_argument("--validation-fraction", type=float, default=0.1, help="share of training sessions held out to pick the best epoch")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-train-clips", type=int, default=MAX_TRAIN_CLIPS, help="use a seeded subset if the corpus has more")
    parser.add_argument(
        "--standard-mix", type=int, default=0,
        help="add this many standard-Spanish clips of the training sentences (synthesised once with Kokoro) to training",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the summary JSON/Markdown go")
    parser.add_argument("--tag", default="", help="names this attempt's summary files (quality-TAG.json)")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--train-config", type=Path, default=None, help="TrainOptions TOML/JSON (flags above win)")
    args = parser.parse_args(argv)

    train_manifest = args.corpus / "train" / "manifest.jsonl"
    accent_manifest = args.corpus / "test_accent" / "manifest.jsonl"
    standard_manifest = args.corpus / "test_standard" / "manifest.jsonl"
    for path in (train_manifest, accent_manifest, standard_manifest):
        if not path.is_file():
            print(f"{path}: missing; run bench/quality/make_corpus.py first", file=sys.stderr)
            return 2
    if args.max_train_clips > MAX_TRAIN_CLIPS:
        parser.error(f"--max-train-clips: the benchmark allows at most {MAX_TRAIN_CLIPS} labelled clips")
    home = args.work
    home.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    base = ensure_base(home)
    train_manifest, labelled_clips = limit_train_manifest(
        train_manifest, args.max_train_clips - args.standard_mix, home, args.seed
    )
    if args.standard_mix:
        accented_rows = read_manifest(train_manifest)[0]
        standard_rows = standard_mix(args.corpus, accented_rows, args.standard_mix)
        train_manifest = home / f"train-mixed-{labelled_clips}+{len(standard_rows)}std.jsonl"
        train_manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in accented_rows + standard_rows))
        labelled_clips += len(standard_rows)

    overrides = dict(
        base=base, name="accent", method=args.method, manifest=str(train_manifest), epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate, lora_r=args.lora_r, lora_alpha=args.lora_alpha or 2 * args.lora_r,
        lora_target_modules=args.target_modules, seed=args.seed,
        # the benchmark has its own test sets: every training session goes to train or validation
        test_fraction=0.0, validation_fraction=args.validation_fraction, restart=True,
    )
    options = TrainOptions.from_file(args.train_config, **overrides) if args.train_config else TrainOptions().with_overrides(**overrides)
    started = time.perf_counter()
    result = train(options, home=home)
    training_seconds = time.perf_counter() - started
    if result.version is None:
        return 0

    started = time.perf_counter()
    if base_is_evaluated(home, base, accent_manifest, standard_manifest, args.beam_size):
        # Same sets, same engine: the base figures in its card stand; only the new version is decoded.
        [after] = evaluate(
            home, [result.version], manifest=accent_manifest, regression_manifest=standard_manifest, beam_size=args.beam_size
        )
        base_card = read_card(home / "models" / base)
        before = _CardFigures(base_card["test_wer_normalised"], base_card["regression_wer"])
        from training.registry import update_card

        update_card(home / "models", result.version, baseline_wer=before.test_wer, baseline_version=base)
    else:
        before, after = evaluate(
            home, [base, result.version], manifest=accent_manifest, regression_manifest=standard_manifest, beam_size=args.beam_size
        )
    evaluation_seconds = time.perf_counter() - started
    gate = check_gate(
        {"version": result.version, **read_card(home / "models" / result.version)},
        {"version": base, **read_card(home / "models" / base)},
    )
    accent_change = (after.test_wer - before.test_wer) / before.test_wer if before.test_wer else 0.0
    standard_change = (after.regression_wer - before.regression_wer) / before.regression_wer if before.regression_wer else 0.0
    summary = {
        "tag": args.tag,
        "base_version": base,
        "method": args.method,
        "labelled_clips": labelled_clips,
        "standard_clips_in_training": args.standard_mix,
        "accent_clips": after.reports["test"].utterances,
        "standard_clips": after.reports["regression"].utterances,
        "beam_size": args.beam_size,
        "options": options.to_dict() | {"learning_rate": options.effective_learning_rate},
        "epochs_run": result.epochs,
        "validation_wer": None if result.validation_wer is None else round(result.validation_wer, 4),
        "evaluation_seconds": round(evaluation_seconds, 1),
        "train_clips": result.train_clips,
        "validation_clips": result.dataset_sizes.get("validation", 0),
        "train_minutes_of_audio": round(result.train_hours * 60, 1),
        "training_seconds": round(training_seconds, 1),
        "steps": result.global_step,
        "accent_wer": {"base": before.test_wer, "fine_tuned": after.test_wer, "relative_change": accent_change},
        "standard_wer": {"base": before.regression_wer, "fine_tuned": after.regression_wer, "relative_change": standard_change},
        "target_met": accent_change <= -0.30 and standard_change <= 0.05 and labelled_clips <= MAX_TRAIN_CLIPS,
        "gate": {"passed": gate.passed, "reasons": gate.reasons},
        "version": result.version,
    }
    (home / "reports" / "quality-summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    stem = f"quality-{args.tag}" if args.tag else "quality"
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (args.out / f"{stem}.md").write_text(summary_markdown(summary))
    with (args.out / "runs.jsonl").open("a") as fh:
        fh.write(json.dumps(summary, ensure_ascii=False) + "\n")
    print(f"\n{'set':<22}{'base WER':>10}{'fine-tuned':>12}{'change':>10}")
    print(f"{'accent (test_accent)':<22}{before.test_wer:>10.3f}{after.test_wer:>12.3f}{accent_change:>+10.1%}")
    print(f"{'standard (regression)':<22}{before.regression_wer:>10.3f}{after.regression_wer:>12.3f}{standard_change:>+10.1%}")
    print(
        f"{labelled_clips} labelled clips ({result.train_clips} train + {summary['validation_clips']} validation, "
        f"{result.train_hours * 60:.1f} min of training audio), {result.global_step} steps, "
        f"{training_seconds / 60:.1f} min of training ({args.method}), {evaluation_seconds / 60:.1f} min of evaluation"
    )
    print(f"target (accent -30 %, standard within +5 %, <= 300 clips): {'MET' if summary['target_met'] else 'not met'}")
    print(f"promotion gate: {'passes' if gate.passed else 'refuses'} — " + "; ".join(gate.reasons))
    print(f"reports: {home / 'reports'}; summary: {args.out / (stem + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
