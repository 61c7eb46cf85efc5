"""One run of the grid, a (strategy, N, seed): whisper-base LoRA-fine-tuned on the N chosen clips and
scored on the accented test set."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.active_learning.pool import PoolScore, base_wer_on
from ml_backend.registry import HF_SUBDIR


@dataclass
class RunResult:
    """One line of ``<out>/runs.jsonl``."""

    strategy: str
    n: int
    seed: int
    version: str
    test_wer: float
    test_wer_raw: float
    train_clips: int
    audio_minutes: float
    mean_base_confidence: float
    base_wer_on_selected: float  # how wrong the base model was on the chosen clips (known only afterwards)
    steps: int
    training_seconds: float
    evaluation_seconds: float


def ensure_base(home: Path) -> str:
    """The packaged whisper-base registered in the work home (converted once, then reused)."""
    from training.ct2_import import ensure_packaged_base

    return ensure_packaged_base(home / "models")


def decoder_only_targets(home: Path, base: str) -> str:
    """LoRA on the decoder's self- and cross-attention q/v only.

    Why offer it: with no trainable weight in the encoder, autograd never records the encoder (the
    30-s window that dominates Whisper's cost), so a step costs about a third of the default. The
    strategies are compared with each other under the same recipe, so a cheaper recipe still answers
    the benchmark's question when the CPU is short.
    """
    config = json.loads((home / "models" / base / HF_SUBDIR / "config.json").read_text())
    return ",".join(
        f"decoder.layers.{i}.{block}.{proj}"
        for i in range(int(config["decoder_layers"]))
        for block in ("self_attn", "encoder_attn")
        for proj in ("q_proj", "v_proj")
    )


def run_one(
    home: Path, base: str, strategy: str, n: int, seed: int, chosen: list[dict[str, Any]],
    scores: dict[str, PoolScore], test_manifest: Path, args: argparse.Namespace,
) -> RunResult:
    from training.evaluate import evaluate
    from training.options import TrainOptions
    from training.train import train

    name = f"al-{strategy}-n{n}-s{seed}"
    subset = home / "subsets" / f"{name}.jsonl"
    subset.parent.mkdir(parents=True, exist_ok=True)
    subset.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen))
    options = TrainOptions().with_overrides(
        base=base, name=name, method="lora", manifest=str(subset), epochs=args.epochs,
        batch_size=args.batch_size, eval_batch_size=args.batch_size, learning_rate=args.learning_rate,
        lora_r=args.lora_r, lora_alpha=2 * args.lora_r, lora_target_modules=args.lora_targets, seed=seed, restart=True,
        # Every selected clip is trained on: with 25-100 clips a validation split would take a large
        # share of the labels, and all strategies get the same epochs anyway.
        test_fraction=0.0, validation_fraction=0.0, early_stopping_patience=0,
    )
    started = time.perf_counter()
    result = train(options, home=home)
    training_seconds = time.perf_counter() - started
    started = time.perf_counter()
    [evaluation] = evaluate(home, [result.version], manifest=test_manifest, include_regression=False, beam_size=args.beam_size)
    evaluation_seconds = time.perf_counter() - started
    if not args.keep_weights:
        # The served ct2/ export (and the small LoRA adapter) are kept; the merged fp32 copy is 290 MB.
        shutil.rmtree(home / "models" / result.version / HF_SUBDIR, ignore_errors=True)
    report = evaluation.reports["test"]
    return RunResult(
        strategy=strategy,
        n=n,
        seed=seed,
        version=result.version,
        test_wer=report.wer,
        test_wer_raw=report.levels["raw"].wer,
        train_clips=result.train_clips,
        audio_minutes=round(result.train_hours * 60, 2),
        mean_base_confidence=sum(scores[r["segment_key"]].confidence for r in chosen) / len(chosen),
        base_wer_on_selected=base_wer_on(chosen, scores),
        steps=result.global_step,
        training_seconds=round(training_seconds, 1),
        evaluation_seconds=round(evaluation_seconds, 1),
    )
