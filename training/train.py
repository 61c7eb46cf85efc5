"""Fine-tune Whisper (LoRA or full) on the pulled corrections and register the result.

Shaped like transformers' speech-recognition examples: every option in one dataclass
(:class:`training.options.TrainOptions`, also readable from a TOML/JSON file), ``set_seed``,
``Seq2SeqTrainer`` with WER on the validation split each epoch, the best checkpoint by WER, early stopping
and resumable checkpoints in ``<home>/runs/<name>/``. The same code runs on CPU, one GPU, or several under
``accelerate launch`` / ``torchrun`` (the Trainer handles the processes; only rank 0 registers).

Crash safety: checkpoints live outside the registry. The new version is assembled in a staging dir by
``training.registry.new_version`` and renamed into ``models/`` only when weights, CTranslate2 export and
model card are all written, so a crash at any point leaves ``CURRENT`` and every finished version as
they were, and ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ml_backend.registry import HF_SUBDIR, RegistryError, read_card, version_dir
from training.base_model import load_processor, resolve_base
from training.collator import SpeechCollator
from training.interpolate import AUTO, OFF, LambdaChoice
from training.model import build_model
from training.options import TrainError, TrainOptions, planned_steps
from training.packing import RowsByEpoch
from training.recipe import choose_weights, prepare_data, recipe_card
from training.trainer_args import last_checkpoint, make_compute_metrics, training_arguments
from training.version import save_version

log = logging.getLogger(__name__)

RUNS_SUBDIR = "runs"


@dataclass
class TrainResult:
    """What a run did: the version it registered, the data it saw, where its checkpoints are."""

    version: str | None  # None when nothing was registered (preprocessing only, or not rank 0)
    version_dir: Path | None
    run_dir: Path
    base: str
    parent: str | None
    method: str
    best_checkpoint: str | None = None
    validation_wer: float | None = None
    train_loss: float | None = None
    global_step: int = 0
    epochs: float = 0.0
    train_clips: int = 0  # the user's clips (replay clips not counted)
    train_hours: float = 0.0
    replay_clips: int = 0
    interpolation: LambdaChoice | None = None
    elapsed_seconds: float = 0.0
    resumed_from: str | None = None
    dataset_sizes: dict[str, int] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    card: dict[str, Any] = field(default_factory=dict)


def train(options: TrainOptions, *, home: str | os.PathLike[str], callbacks: Sequence[Any] = ()) -> TrainResult:
    """Fine-tune, keep the best checkpoint by validation WER and register it as ``<name>-vN``.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (benchmarks, tests).
    """
    from training.progress import library_bars

    with library_bars(options.progress):
        return _train(options, home=home, callbacks=callbacks)


def training_threads(environ: Mapping[str, str] | None = None) -> int:
    """torch's threads for training: ``OMP_NUM_THREADS`` when set (torchrun sets it), else this process's
    share of the cores it may use (:func:`ml_backend.cpu.cpu_threads`, split between a launcher's
    processes on this node)."""
    from ml_backend.cpu import cpu_threads

    env = os.environ if environ is None else environ
    if env.get("OMP_NUM_THREADS", "").strip().isdigit():
        return max(1, int(env["OMP_NUM_THREADS"]))
    local_processes = int(env.get("LOCAL_WORLD_SIZE", "") or 1)
    return max(1, cpu_threads(env) // max(1, local_processes))


def use_training_threads() -> None:
    """Give torch :func:`training_threads` before training or decoding with it in this process.

    A CTranslate2 model loaded earlier in the process (scoring a version, serving) sets OpenMP's thread
    count to its own, one per replica on 2 cores, and torch's with it: work after it ran on one core
    (whisper-base LoRA steps 1.71x slower, README).
    """
    import torch

    torch.set_num_threads(training_threads())


def _train(options: TrainOptions, *, home: str | os.PathLike[str], callbacks: Sequence[Any]) -> TrainResult:
    from transformers import EarlyStoppingCallback, Seq2SeqTrainer, set_seed
    from transformers.utils import logging as hf_logging

    use_training_threads()

    if not logging.getLogger().isEnabledFor(logging.INFO):
        # Validation runs `generate` every epoch, and transformers warns about its own generation config and
        # attention masks on each call: noise for a user, kept with `habla-ls -v`.
        hf_logging.set_verbosity_error()

    from training import registry

    started = time.monotonic()
    home = Path(home)
    models_dir = home / "models"
    run_dir = Path(options.run_dir) if options.run_dir else home / RUNS_SUBDIR / options.name

    checkpoint = last_checkpoint(run_dir)
    if checkpoint and not options.resume and not options.preprocessing_only:
        if not options.restart:
            raise TrainError(
                f"{run_dir} holds checkpoints of an unfinished run ({checkpoint.name}): "
                "pass --resume to continue it or --restart to discard it"
            )
        log.warning("discarding the checkpoints of an earlier run in %s", run_dir)
        shutil.rmtree(run_dir)
        checkpoint = None
    if options.resume and checkpoint is None:
        log.warning("--resume: no checkpoint in %s; starting from the beginning", run_dir)

    set_seed(options.seed)
    base = resolve_base(options.base, models_dir, options.start_from)
    processor = load_processor(base.path, options.language)
    prepared = prepare_data(options, home, processor)
    built = prepared.built
    result = TrainResult(
        version=None,
        version_dir=None,
        run_dir=run_dir,
        base=base.base_model,
        parent=base.parent,
        method=options.method,
        dataset_sizes=dict(built.sizes),
        rejected=list(built.rejected),
        train_clips=built.sizes.get("train", 0) - built.replay_clips,
        train_hours=built.hours.get("train", 0.0) - built.replay_hours,
        replay_clips=built.replay_clips,
    )
    if options.preprocessing_only:
        result.elapsed_seconds = time.monotonic() - started
        return result

    has_validation = "validation" in built.dataset
    if not has_validation:
        log.warning("no validation sessions: training %s epochs without checkpoint selection", options.epochs)
    learning_rate = options.learning_rate_for(planned_steps(options, len(built.dataset["train"])))
    args = training_arguments(options, run_dir, has_validation, learning_rate)
    model = build_model(base, options)
    trainer_class = Seq2SeqTrainer
    restore_encoder = None
    if options.frozen_encoder_layers:
        from training.encoder_cache import cached_splits, run_upper_layers, upper_encoder_trainer

        train_data, eval_data = cached_splits(
            model, built.dataset, base.path, run_dir, frozen_layers=options.frozen_encoder_layers,
            batch_size=options.eval_batch_size, progress=options.progress,
        )
        restore_encoder = run_upper_layers(model.get_encoder(), options.frozen_encoder_layers)
        trainer_class = upper_encoder_trainer(Seq2SeqTrainer)
    else:
        columns = ["input_features", "labels"]
        train_data = built.dataset["train"].with_format("numpy", columns=columns)
        if len(built.train_by_epoch) > 1:
            train_data = RowsByEpoch([d.with_format("numpy", columns=columns) for d in built.train_by_epoch])
            callbacks = [*callbacks, train_data.callback()]
        if options.mel_warp:
            from training.augment import MelWarpedRows

            train_data = MelWarpedRows(train_data, options.mel_warp, options.seed)
        eval_data = built.dataset["validation"].with_format("numpy", columns=columns) if has_validation else None
    all_callbacks = list(callbacks)
    if has_validation and options.early_stopping_patience > 0:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=options.early_stopping_patience))
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        data_collator=SpeechCollator(
            pad_token_id=processor.tokenizer.pad_token_id,
            decoder_start_token_id=model.config.decoder_start_token_id,
        ),
        processing_class=processor,
        compute_metrics=make_compute_metrics(processor.tokenizer) if has_validation else None,
        callbacks=all_callbacks,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from training.progress import ReadableLog, ReadableProgress

    # transformers' own callbacks print each log event as a Python dict
    trainer.remove_callback(ProgressCallback if options.progress else PrinterCallback)
    trainer.add_callback(ReadableProgress if options.progress else ReadableLog)
    resume_from = str(checkpoint) if options.resume and checkpoint else None
    try:
        output = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if restore_encoder is not None:
            restore_encoder()
    state = trainer.state
    result.resumed_from = resume_from
    result.global_step = state.global_step
    result.epochs = float(state.epoch or 0.0)
    result.train_loss = float(output.training_loss)
    result.best_checkpoint = state.best_model_checkpoint
    result.validation_wer = float(state.best_metric) if state.best_metric is not None else None

    if not trainer.is_world_process_zero():
        return result
    model = trainer.model
    result.interpolation = choose_weights(model, base, processor, built, options)
    with registry.new_version(models_dir, options.name) as (version, staging):
        save_version(model, processor, staging, options)
        card = registry.write_card(
            staging,
            {
                "version": version,
                "name": options.name,
                "parent": base.parent,
                "base_model": base.base_model,
                "method": options.method,
                "train_hours": round(result.train_hours, 4),
                "train_clips": result.train_clips,
                "validation_clips": built.sizes.get("validation", 0),
                # Every correction the dataset held (trained on, or kept for validation and the test split):
                # the x axis of the learning curve in `habla-ls status`.
                "corrections": result.train_clips + built.sizes.get("validation", 0) + built.sizes.get("test", 0),
                "validation_wer": result.validation_wer,
                "test_split_id": built.split_ids.get("test"),
                "test_wer_raw": None,
                "test_wer_normalised": None,
                "baseline_wer": None,
                "regression_wer": None,
                "train_loss": result.train_loss,
                "global_step": result.global_step,
                "epochs": result.epochs,
                "training_seconds": round(time.monotonic() - started, 1),
                "learning_rate": learning_rate,
                "processes": trainer.args.world_size,
                **recipe_card(options, prepared, result.interpolation),
                "options": options.to_dict(),
            },
        )
    result.version = version
    result.version_dir = models_dir / version
    result.card = card
    # The run is finished and registered: its checkpoints are no longer needed to resume (the
    # TensorBoard logs next to them stay).
    for stale in run_dir.glob("checkpoint-*"):
        shutil.rmtree(stale, ignore_errors=True)
    from training.encoder_cache import remove_states

    remove_states(run_dir)
    result.elapsed_seconds = time.monotonic() - started
    return result


# Fields a version's card inherits when it is re-registered with interpolated weights: how it was
# trained, not how it was evaluated (the new weights have not been).
_TRAINING_CARD_FIELDS = (
    "parent", "base_model", "method", "train_hours", "train_clips", "validation_clips", "validation_wer",
    "test_split_id", "train_loss", "global_step", "epochs", "training_seconds", "processes", "recipe", "replay_clips",
    "replay",
)


def interpolate_version(tuned: str, options: TrainOptions, *, home: str | os.PathLike[str]) -> TrainResult:
    """Register ``tuned``'s weights interpolated towards its parent as a new ``<options.name>-vN``.

    The same choice as ``train`` makes with ``interpolation`` on, applied to a version already
    registered (its ``hf/`` weights, LoRA merged): what bench/quality/run.py uses to compare a recipe
    with and without interpolation on the same fine-tuned weights. ``options`` must describe the data
    the version was trained on (manifest, split, replay set) so the validation sets are the same.
    """
    from transformers import WhisperForConditionalGeneration

    from training import registry

    use_training_threads()  # its weight search decodes with torch, often after a version was scored
    started = time.monotonic()
    home = Path(home)
    models_dir = home / "models"
    try:
        tuned_dir = version_dir(models_dir, tuned)
    except RegistryError as exc:
        raise TrainError(str(exc)) from exc
    tuned_card = read_card(tuned_dir)
    if options.effective_interpolation == OFF:
        options = options.with_overrides(interpolation=AUTO)
    base = resolve_base(options.base or tuned_card.get("parent"), models_dir)
    processor = load_processor(tuned_dir / HF_SUBDIR, options.language)
    prepared = prepare_data(options, home, processor)
    model = WhisperForConditionalGeneration.from_pretrained(str(tuned_dir / HF_SUBDIR))
    model.generation_config.language = options.language
    model.generation_config.task = "transcribe"
    base_model = WhisperForConditionalGeneration.from_pretrained(str(base.path))
    # Merged weights: interpolating them is the same as scaling the adapter, for LoRA and full alike.
    full = replace(options, method="full")
    choice = choose_weights(model, base, processor, prepared.built, full, base_model=base_model)
    del base_model
    with registry.new_version(models_dir, options.name) as (version, staging):
        save_version(model, processor, staging, full)
        card = registry.write_card(
            staging,
            {
                "version": version,
                "name": options.name,
                **{k: tuned_card.get(k) for k in _TRAINING_CARD_FIELDS},
                "test_wer_raw": None,
                "test_wer_normalised": None,
                "baseline_wer": None,
                "regression_wer": None,
                "interpolated_from": tuned,
                "interpolation_lambda": choice.lam if choice else None,
                "interpolation": choice.to_dict() if choice else None,
                "options": options.to_dict(),
            },
        )
    return TrainResult(
        version=version, version_dir=models_dir / version, run_dir=home / RUNS_SUBDIR / options.name, base=base.base_model,
        parent=base.parent, method=str(tuned_card.get("method") or options.method), validation_wer=tuned_card.get("validation_wer"),
        train_clips=int(tuned_card.get("train_clips") or 0), train_hours=float(tuned_card.get("train_hours") or 0.0),
        replay_clips=int(tuned_card.get("replay_clips") or 0), interpolation=choice, card=card,
        dataset_sizes=dict(prepared.built.sizes), elapsed_seconds=time.monotonic() - started,
    )
