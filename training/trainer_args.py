"""What the ``Seq2SeqTrainer`` is given besides the model and the data: its arguments, the validation metric.

Validation WER every epoch picks the best checkpoint; checkpoints are kept to resume (``last_checkpoint``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import corpus_wer
from training.options import TrainOptions

log = logging.getLogger(__name__)


def _precision_flags(options: TrainOptions) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        if options.precision in ("fp16", "bf16"):
            log.warning("precision %s needs a GPU; training in fp32 on the CPU", options.precision)
        return {"use_cpu": True, "fp16": False, "bf16": False}
    precision = options.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"use_cpu": False, "fp16": precision == "fp16", "bf16": precision == "bf16"}


def training_arguments(options: TrainOptions, run_dir: Path, has_validation: bool, learning_rate: float) -> Any:
    from transformers import Seq2SeqTrainingArguments

    strategy = "epoch" if has_validation else "no"
    return Seq2SeqTrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.eval_batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        learning_rate=learning_rate,
        warmup_steps=options.warmup,
        weight_decay=options.weight_decay,
        num_train_epochs=options.epochs,
        max_steps=options.max_steps,
        eval_strategy=strategy,
        save_strategy="epoch",
        save_total_limit=2,  # the best and the last: enough to resume and to finish with the best
        load_best_model_at_end=has_validation,
        metric_for_best_model="wer" if has_validation else None,
        greater_is_better=False if has_validation else None,
        predict_with_generate=True,
        generation_max_length=options.generation_max_length,
        generation_num_beams=options.eval_num_beams,
        **_checkpointing_arguments(options, Seq2SeqTrainingArguments),
        # Every trainable parameter takes part in every step (LoRA adapters, or the whole model): DDP need
        # not search the graph for unused ones on each step.
        ddp_find_unused_parameters=False,
        logging_steps=options.logging_steps,
        report_to=["tensorboard"],
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=options.dataloader_workers,
        disable_tqdm=not options.progress,
        seed=options.seed,
        data_seed=options.seed,
        **_precision_flags(options),
    )


def _checkpointing_arguments(options: TrainOptions, arguments_class: Any) -> dict[str, Any]:
    # transformers 5 renamed gradient checkpointing to activation checkpointing (the old name warns).
    names = {f.name for f in fields(arguments_class)}
    prefix = "activation" if "activation_checkpointing" in names else "gradient"
    return {
        f"{prefix}_checkpointing": options.gradient_checkpointing,
        f"{prefix}_checkpointing_kwargs": {"use_reentrant": False} if options.gradient_checkpointing else None,
    }


def last_checkpoint(run_dir: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(run_dir).is_dir():
        return None
    found = get_last_checkpoint(str(run_dir))
    return Path(found) if found else None


def make_compute_metrics(tokenizer: Any) -> Callable[[Any], dict[str, float]]:
    """Validation WER on normalised text, the same figure evaluation reports."""

    def compute_metrics(prediction: Any) -> dict[str, float]:
        predictions = prediction.predictions
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions = np.where(predictions < 0, tokenizer.pad_token_id, predictions)
        labels = np.where(prediction.label_ids < 0, tokenizer.pad_token_id, prediction.label_ids)
        hypotheses = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return {"wer": corpus_wer(references, hypotheses)}

    return compute_metrics
