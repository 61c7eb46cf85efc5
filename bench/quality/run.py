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
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ml_backend.registry import list_versions, read_card  # noqa: E402

DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "results" / "quality-corpus"
DEFAULT_WORK = Path(__file__).resolve().parents[1] / "results" / "quality-run"
BASE_NAME = "whisper-base"


def ensure_base(home: Path) -> str:
    """The packaged whisper-base registered in the work home (converted once, then reused)."""
    from ml_backend.whisper_files import assemble_packaged_whisper_base
    from training.ct2_import import import_ct2

    models = home / "models"
    existing = [v for v in list_versions(models) if v.startswith(f"{BASE_NAME}-v")]
    if existing:
        return existing[0]
    version, _card = import_ct2(assemble_packaged_whisper_base(), models, BASE_NAME, verify=False, make_current=True)
    return version


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
    home = args.work
    home.mkdir(parents=True, exist_ok=True)
    base = ensure_base(home)

    overrides = dict(
        base=base, name="accent", method=args.method, manifest=str(train_manifest), epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
        # the benchmark has its own test sets: every training session goes to train or validation
        test_fraction=0.0, validation_fraction=0.1, restart=True,
    )
    options = TrainOptions.from_file(args.train_config, **overrides) if args.train_config else TrainOptions().with_overrides(**overrides)
    started = time.perf_counter()
    result = train(options, home=home)
    training_seconds = time.perf_counter() - started
    if result.version is None:
        return 0

    evaluations = evaluate(
        home, [base, result.version], manifest=accent_manifest, regression_manifest=standard_manifest, beam_size=args.beam_size
    )
    before, after = evaluations
    gate = check_gate(
        {"version": result.version, **read_card(home / "models" / result.version)},
        {"version": base, **read_card(home / "models" / base)},
    )
    accent_change = (after.test_wer - before.test_wer) / before.test_wer if before.test_wer else 0.0
    standard_change = (after.regression_wer - before.regression_wer) / before.regression_wer if before.regression_wer else 0.0
    summary = {
        "method": args.method,
        "train_clips": result.train_clips,
        "validation_clips": result.dataset_sizes.get("validation", 0),
        "train_minutes_of_audio": round(result.train_hours * 60, 1),
        "training_seconds": round(training_seconds, 1),
        "steps": result.global_step,
        "accent_wer": {"base": before.test_wer, "fine_tuned": after.test_wer, "relative_change": accent_change},
        "standard_wer": {"base": before.regression_wer, "fine_tuned": after.regression_wer, "relative_change": standard_change},
        "target_met": accent_change <= -0.30 and standard_change <= 0.05 and result.train_clips <= 300,
        "gate": {"passed": gate.passed, "reasons": gate.reasons},
        "version": result.version,
    }
    (home / "reports" / "quality-summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    print(f"\n{'set':<22}{'base WER':>10}{'fine-tuned':>12}{'change':>10}")
    print(f"{'accent (test_accent)':<22}{before.test_wer:>10.3f}{after.test_wer:>12.3f}{accent_change:>+10.1%}")
    print(f"{'standard (regression)':<22}{before.regression_wer:>10.3f}{after.regression_wer:>12.3f}{standard_change:>+10.1%}")
    print(
        f"{result.train_clips} training clips ({result.train_hours * 60:.1f} min of audio), {result.global_step} steps, "
        f"{training_seconds / 60:.1f} min of training ({args.method})"
    )
    print(f"target (accent -30 %, standard within +5 %, <= 300 clips): {'MET' if summary['target_met'] else 'not met'}")
    print(f"promotion gate: {'passes' if gate.passed else 'refuses'} — " + "; ".join(gate.reasons))
    print(f"reports: {home / 'reports'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
