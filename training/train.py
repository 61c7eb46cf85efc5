"""Fine-tune Whisper (LoRA or full) on the pulled corrections and register the result.

Shaped like transformers' speech-recognition examples: every option in one dataclass
(:class:`TrainOptions`, also readable from a TOML/JSON file), ``set_seed``, ``Seq2SeqTrainer`` with WER
on the validation split each epoch, the best checkpoint by WER, early stopping and resumable
checkpoints in ``<home>/runs/<name>/``. The same code runs on CPU, one GPU, or several under
``accelerate launch`` / ``torchrun`` (the Trainer handles the processes; only rank 0 registers).

Recipes (:data:`RECIPES`): *rehearsal* mixes a replay set of standard Spanish (``training.replay_set``)
into the train split at ``replay_ratio``; *interpolation* registers ``W_base + λ (W_tuned − W_base)``
with λ chosen on validation (``training.interpolate``). :data:`DEFAULT_RECIPE` is what ``habla-ls
train``, ``round --finish`` and the demo use.

Crash safety: checkpoints live outside the registry. The new version is assembled in a staging dir by
``training.registry.new_version`` and renamed into ``models/`` only when weights, CTranslate2 export and
model card are all written, so a crash at any point leaves ``CURRENT`` and every finished version as
they were, and ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import tomllib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# Offline: no model hub (DESIGN.md). Set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

from ml_backend.registry import HF_SUBDIR, RegistryError, is_hf_dir, read_card, read_current, version_dir  # noqa: E402
from training.dataset import (  # noqa: E402
    BuiltDataset,
    DatasetOptions,
    RowsByEpoch,
    build_dataset,
    default_manifest,
    prepare_processor,
)
from training.interpolate import (  # noqa: E402
    ACCENT_SET,
    AUTO,
    DEFAULT_GRID,
    DEFAULT_LIMIT,
    OFF,
    STANDARD_SET,
    LambdaChoice,
    parse_grid,
    parse_interpolation,
)
from training.metrics import corpus_wer  # noqa: E402

log = logging.getLogger(__name__)

LORA_SUBDIR = "lora"
RUNS_SUBDIR = "runs"
DEFAULT_LEARNING_RATES = {"lora": 1e-3, "full": 1e-5}
LORA_SCOPES = ("encoder+decoder", "encoder", "decoder")
START_FROM = ("served", "root")


@dataclass(frozen=True)
class Recipe:
    replay_ratio: float  # replay clips per user training clip (0 = no rehearsal)
    interpolation: str | float  # "off", "auto" or a fixed weight


# About one replay clip per eight of the user's: measured on bench/quality (whisper-base, 300 clips,
# held-out voices and sentences, seeds 1 and 2), 0.12 of natural-voice replay beat both no replay and
# 0.25 of mixed espeak-ng/Kokoro replay on the accent *and* on standard speech: the replay clips come out
# of the user's budget, so the fewer that keep standard speech, the more of the accent is learnt.
REPLAY_RATIO = 0.12
RECIPES: dict[str, Recipe] = {
    "plain": Recipe(0.0, OFF),
    "rehearsal": Recipe(REPLAY_RATIO, OFF),
    "interpolation": Recipe(0.0, AUTO),
    "rehearsal+interpolation": Recipe(REPLAY_RATIO, AUTO),
}
# What `habla-ls train` (and so `habla-ls round --finish` and the demo) uses when no recipe is named:
# the winner of bench/quality/run.py (README, "Rehearsal with natural-voice replay").
DEFAULT_RECIPE = "rehearsal"


class TrainError(RuntimeError):
    """Training cannot start or finish; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class TrainOptions:
    """Every training knob. ``TrainOptions.from_file("train.toml")`` reads the same names."""

    # what to train
    base: str | None = None  # registry version or model dir; None: as start_from says
    # Where a round's training starts when no base is named: "served" (the registry's CURRENT) or "root"
    # (the model the served version descends from, e.g. whisper-base-v1): every round is then one
    # fine-tune of the same model on all corrections so far, so fine-tunes cannot pile up on each other.
    start_from: str = "served"
    name: str = "habla"  # versions are registered as <name>-vN
    method: str = "lora"  # "lora" or "full"
    manifest: str | None = None  # default <home>/datasets/manifest.jsonl
    language: str = "es"
    # LoRA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    lora_scope: str = "encoder+decoder"  # which half of the model gets adapters: encoder+decoder, encoder or decoder
    # optimisation
    epochs: float = 5.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float | None = None  # default: 1e-3 for LoRA, 1e-5 for full
    batch_size: int = 8
    eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup: float = 0.1  # ratio of total steps if < 1, else steps
    weight_decay: float = 0.0
    early_stopping_patience: int = 2  # epochs without a better validation WER; 0 = off
    seed: int = 42
    # Freeze the encoder's stem and first N layers and compute their output once (training.encoder_cache):
    # a CPU epoch is then several times faster. LoRA targets only the layers above; N >= the encoder's
    # layer count trains the decoder alone.
    frozen_encoder_layers: int = 0
    # regularisation and memory
    # Vocal-tract-length perturbation: each training clip's mel axis stretched by a random factor in
    # [1 - mel_warp, 1 + mel_warp] every time it is seen (training.augment); 0 = off.
    mel_warp: float = 0.0
    # Share of the training clips trained on several to a 30-s window, as the backend packs short
    # clips when it serves (training.dataset.plan_packed_windows); the rest train alone, so a clip
    # transcribed on its own (Habla) is still what the model sees half the time. 0 = off.
    pack_fraction: float = 0.5
    # Lay the same packed clips into other windows every epoch (other neighbours, other positions in the
    # window), so the decoder does not learn one context per clip.
    repack_windows: bool = False
    spec_augment: bool = False
    gradient_checkpointing: bool = False
    precision: str = "auto"  # auto (bf16/fp16 on GPU, fp32 on CPU), fp32, fp16, bf16
    # validation decoding (greedy is enough to rank checkpoints and much faster on CPU)
    generation_max_length: int = 128
    eval_num_beams: int = 1
    # data
    test_fraction: float = 0.15
    validation_fraction: float = 0.15
    split_seed: int = 13
    min_duration: float = 0.3
    max_duration: float = 30.0
    min_dbfs: float = -60.0
    # recipe (RECIPES); replay_ratio / interpolation left at None take the recipe's value
    recipe: str = DEFAULT_RECIPE
    replay_ratio: float | None = None  # replay clips per user training clip, train split only
    replay_manifest: str | None = None  # default: the generated replay set (<home>/datasets/replay/)
    interpolation: str | float | None = None  # "off", "auto" (chosen on validation) or a fixed weight in [0, 1]
    interpolation_grid: tuple[float, ...] = DEFAULT_GRID
    interpolation_limit: float = DEFAULT_LIMIT  # relative standard-speech validation WER worsening allowed
    # run control
    run_dir: str | None = None  # default <home>/runs/<name>
    resume: bool = False
    restart: bool = False  # discard checkpoints of an earlier unfinished run
    preprocessing_only: bool = False  # build and cache features, then stop (before multi-GPU runs)
    export_ct2: bool = True  # write ct2/ (int8) into the version so the backend serves it directly
    ct2_quantization: str = "int8"
    logging_steps: int = 10
    dataloader_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.start_from not in START_FROM:
            raise TrainError(f"start_from must be one of {', '.join(START_FROM)}, not {self.start_from!r}")
        if self.method not in ("lora", "full"):
            raise TrainError(f"method must be 'lora' or 'full', not {self.method!r}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise TrainError(f"precision must be auto, fp32, fp16 or bf16, not {self.precision!r}")
        if isinstance(self.lora_target_modules, str):
            object.__setattr__(self, "lora_target_modules", tuple(m.strip() for m in self.lora_target_modules.split(",") if m.strip()))
        else:
            object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        if self.lora_scope not in LORA_SCOPES:
            raise TrainError(f"lora_scope must be one of {', '.join(LORA_SCOPES)}, not {self.lora_scope!r}")
        if self.frozen_encoder_layers < 0:
            raise TrainError(f"frozen_encoder_layers must be 0 or more, not {self.frozen_encoder_layers!r}")
        if not 0 <= self.mel_warp < 0.5:
            raise TrainError(f"mel_warp must be at least 0 and below 0.5, not {self.mel_warp!r}")
        if not 0 <= self.pack_fraction <= 1:
            raise TrainError(f"pack_fraction must be between 0 and 1, not {self.pack_fraction!r}")
        if self.frozen_encoder_layers and self.mel_warp:
            raise TrainError("mel_warp changes the encoder's input on every pass, which frozen_encoder_layers computes only once: choose one")
        if self.frozen_encoder_layers and self.spec_augment:
            raise TrainError("spec_augment masks the encoder's input, which frozen_encoder_layers computes only once: choose one")
        if self.recipe not in RECIPES:
            raise TrainError(f"recipe must be one of {', '.join(RECIPES)}, not {self.recipe!r}")
        if self.replay_ratio is not None and not self.replay_ratio >= 0:
            raise TrainError(f"replay_ratio must be 0 or more, not {self.replay_ratio!r}")
        if not self.interpolation_limit >= 0:
            raise TrainError(f"interpolation_limit must be 0 or more, not {self.interpolation_limit!r}")
        try:
            if self.interpolation is not None:
                object.__setattr__(self, "interpolation", parse_interpolation(self.interpolation))
            object.__setattr__(self, "interpolation_grid", parse_grid(self.interpolation_grid))
        except ValueError as exc:
            raise TrainError(str(exc)) from None

    @property
    def effective_replay_ratio(self) -> float:
        return float(self.replay_ratio) if self.replay_ratio is not None else RECIPES[self.recipe].replay_ratio

    @property
    def effective_interpolation(self) -> str | float:
        return self.interpolation if self.interpolation is not None else RECIPES[self.recipe].interpolation

    @property
    def effective_learning_rate(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.method]

    @property
    def dataset_options(self) -> DatasetOptions:
        return DatasetOptions(
            test_fraction=self.test_fraction,
            validation_fraction=self.validation_fraction,
            seed=self.split_seed,
            min_duration=self.min_duration,
            max_duration=self.max_duration,
            min_dbfs=self.min_dbfs,
            pack_fraction=self.pack_fraction,
            pack_seed=self.seed,
            # encoder states of frozen layers are computed once, for the first plan's windows only
            pack_plans=max(1, math.ceil(self.epochs)) if self.repack_windows and not self.frozen_encoder_layers else 1,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> TrainOptions:
        """Options from a TOML (optionally under ``[train]``) or JSON file; ``overrides`` win."""
        path = Path(path)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except FileNotFoundError as exc:
            raise TrainError(f"{path}: options file not found") from exc
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise TrainError(f"{path}: cannot parse options ({exc})") from exc
        data = data.get("train", data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainError(f"{path}: unknown option(s) {', '.join(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def with_overrides(self, **overrides: Any) -> TrainOptions:
        """A copy with the given options changed; ``None`` means "not given"."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        data["interpolation_grid"] = list(self.interpolation_grid)
        # Paths given on the command line arrive as Path objects; cards and reports are JSON.
        return {k: str(v) if isinstance(v, os.PathLike) else v for k, v in data.items()}


@dataclass
class TrainResult:
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


# ---------------------------------------------------------------------------------------------- base model


@dataclass(frozen=True)
class BaseModel:
    path: Path  # a transformers Whisper dir
    parent: str | None  # registry version it came from
    base_model: str  # the root model (through the registry's lineage)


def lineage_root(models_dir: Path, version: str) -> str:
    """The first version of ``version``'s line of parents that is still in the registry (itself if it has no parent)."""
    seen = {version}
    while True:
        parent = read_card(version_dir(models_dir, version)).get("parent")
        if not parent or parent in seen or not (Path(models_dir) / str(parent)).is_dir():
            return version
        seen.add(parent)
        version = str(parent)


def resolve_base(base: str | None, models_dir: Path, start_from: str = "served") -> BaseModel:
    """The transformers dir to start from: a registry version or a model dir; without one, CURRENT, or with
    ``start_from="root"`` the root of CURRENT's lineage."""
    if base is not None and Path(base).is_dir() and is_hf_dir(Path(base)):
        return BaseModel(Path(base), None, str(Path(base).resolve()))
    version = base or read_current(models_dir)
    if base is None and version is not None and start_from == "root":
        try:
            version = lineage_root(models_dir, version)
        except RegistryError as exc:
            raise TrainError(f"start_from root: {exc}") from exc
    if version is None:
        raise TrainError(
            f"no base model: {models_dir} has no CURRENT version; run `habla-ls models bootstrap` or pass --base DIR"
        )
    try:
        vdir = version_dir(models_dir, version)
    except RegistryError as exc:
        raise TrainError(f"--base {version}: {exc}") from exc
    hf = vdir / HF_SUBDIR
    if not (hf / "config.json").is_file():
        raise TrainError(f"{version} has no transformers weights in {hf} (needed to fine-tune)")
    card = read_card(vdir)
    return BaseModel(hf, version, str(card.get("base_model") or version))


def load_processor(model_dir: Path, language: str) -> Any:
    from transformers import WhisperProcessor

    return prepare_processor(WhisperProcessor.from_pretrained(str(model_dir)), language)


# ---------------------------------------------------------------------------------------------- batching


@dataclass
class SpeechCollator:
    """Stack log-mel features; pad labels with -100 so padding is not learnt.

    The tokenizer puts <|startoftranscript|> first; the model prepends it again when shifting labels
    right, so it is dropped here (as in transformers' Whisper fine-tuning example).
    """

    pad_token_id: int
    decoder_start_token_id: int

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if "encoder_states" in features[0]:  # the whole encoder frozen: its cached output
            from transformers.modeling_outputs import BaseModelOutput

            states = torch.from_numpy(np.stack([np.asarray(f["encoder_states"], dtype=np.float32) for f in features]))
            inputs = {"encoder_outputs": BaseModelOutput(last_hidden_state=states)}
        elif "lower_encoder_states" in features[0]:  # the input of the encoder layers still trained
            inputs = {"input_features": torch.from_numpy(np.stack([np.asarray(f["lower_encoder_states"], dtype=np.float32) for f in features]))}
        else:
            inputs = {"input_features": torch.tensor(np.stack([np.asarray(f["input_features"], dtype=np.float32) for f in features]))}
        labels = [list(np.asarray(f["labels"], dtype=np.int64)) for f in features]
        if labels and all(seq and seq[0] == self.decoder_start_token_id for seq in labels):
            labels = [seq[1:] for seq in labels]
        longest = max(len(seq) for seq in labels)
        padded = torch.full((len(labels), longest), -100, dtype=torch.long)
        for i, seq in enumerate(labels):
            padded[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return {**inputs, "labels": padded}


def make_compute_metrics(tokenizer: Any):
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


# ---------------------------------------------------------------------------------------------- model


def build_model(base: BaseModel, options: TrainOptions) -> Any:
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(str(base.path))
    model.generation_config.language = options.language
    model.generation_config.task = "transcribe"
    model.generation_config.forced_decoder_ids = None
    if options.spec_augment:
        # Time and frequency masking of the log-mel input while training (Whisper's own SpecAugment path).
        model.config.apply_spec_augment = True
        model.config.mask_time_prob = max(model.config.mask_time_prob, 0.05)
        model.config.mask_feature_prob = max(model.config.mask_feature_prob, 0.05)
    if options.gradient_checkpointing:
        model.config.use_cache = False
    return adapt_model(model, options)


def adapt_model(model: Any, options: TrainOptions) -> Any:
    """LoRA adapters on a loaded model, or, for a full fine-tune, its lower encoder layers frozen, as ``options`` say."""
    if options.method == "lora":
        from peft import LoraConfig, get_peft_model

        from training.encoder_cache import trainable_targets

        targets = list(options.lora_target_modules)
        if options.frozen_encoder_layers or options.lora_scope != "encoder+decoder":
            targets = trainable_targets(model, targets, options.frozen_encoder_layers)
            if options.lora_scope != "encoder+decoder":
                # The decoder is also the language model: adapting only the encoder leaves it as it was.
                targets = [name for name in targets if f".{options.lora_scope}." in f".{name}"]
            if not targets:
                raise TrainError(f"no LoRA target left: lora_scope {options.lora_scope} with {options.frozen_encoder_layers} frozen encoder layers")
        config = LoraConfig(
            r=options.lora_r,
            lora_alpha=options.lora_alpha,
            lora_dropout=options.lora_dropout,
            target_modules=targets,
            bias="none",
        )
        with warnings.catch_warnings():
            # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`: noise, not news.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            model = get_peft_model(model, config)
    elif options.frozen_encoder_layers:
        from training.encoder_cache import freeze_lower_encoder

        freeze_lower_encoder(model, options.frozen_encoder_layers)
    return model


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


def _training_arguments(options: TrainOptions, run_dir: Path, has_validation: bool) -> Any:
    from transformers import Seq2SeqTrainingArguments

    strategy = "epoch" if has_validation else "no"
    return Seq2SeqTrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.eval_batch_size,
        gradient_accumulation_steps=options.gradient_accumulation_steps,
        learning_rate=options.effective_learning_rate,
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


# ---------------------------------------------------------------------------------------------- saving


def save_version(
    model: Any,
    processor: Any,
    staging: Path,
    options: TrainOptions,
) -> None:
    """Write ``hf/`` (full weights, LoRA merged), ``lora/`` (the adapter alone) and ``ct2/`` into staging."""
    from training.export import convert_to_ct2, write_processor_files

    hf_dir = staging / HF_SUBDIR
    if options.method == "lora":
        model.save_pretrained(str(staging / LORA_SUBDIR))
        processor.save_pretrained(str(staging / LORA_SUBDIR))
        model = model.merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(str(hf_dir))
    write_processor_files(processor, hf_dir)
    if options.export_ct2:
        from ml_backend.registry import CT2_SUBDIR

        convert_to_ct2(hf_dir, staging / CT2_SUBDIR, quantization=options.ct2_quantization)


# ---------------------------------------------------------------------------------------------- data


@dataclass
class PreparedData:
    built: BuiltDataset
    replay_manifest: Path | None = None
    replay_pool: int = 0  # rows available for rehearsal
    standard_validation: int = 0  # rows of the replay set held out to choose the interpolation weight


def prepare_data(options: TrainOptions, home: Path, processor: Any) -> PreparedData:
    """The split dataset, with replay rows in train and the standard-speech validation set when the recipe asks.

    Under accelerate/torchrun the main process makes the replay set and computes and caches the
    features; the others then read them instead of racing to write them.
    """
    from accelerate import PartialState

    from training.replay_set import ReplaySetError, ensure_replay_set, load_replay

    datasets_dir = home / "datasets"
    manifest = Path(options.manifest) if options.manifest else default_manifest(datasets_dir)
    ratio = options.effective_replay_ratio
    interpolation = options.effective_interpolation
    import torch

    # cpu=True on a machine without CUDA: otherwise accelerate does not see a torchrun/accelerate launch
    # of several CPU processes as distributed, and every process would compute the features at once.
    with PartialState(cpu=not torch.cuda.is_available()).main_process_first():
        replay = None
        if ratio > 0 or interpolation == AUTO:
            try:
                replay = load_replay(ensure_replay_set(datasets_dir, options.replay_manifest, progress=options.progress))
            except ReplaySetError as exc:
                raise TrainError(str(exc)) from exc
            for line in replay.problems:
                log.warning("%s", line)
        built = build_dataset(
            manifest,
            datasets_dir,
            processor,
            options.dataset_options,
            replay_pool=replay.pool if replay is not None and ratio > 0 else (),
            replay_ratio=ratio,
            replay_seed=options.seed,
            extra_sets={STANDARD_SET: replay.validation} if replay is not None and interpolation == AUTO else None,
        )
    return PreparedData(
        built,
        replay.manifest if replay is not None else None,
        len(replay.pool) if replay is not None else 0,
        len(replay.validation) if replay is not None and interpolation == AUTO else 0,
    )


# ---------------------------------------------------------------------------------------------- interpolation


def choose_weights(
    model: Any, base: BaseModel, processor: Any, built: BuiltDataset, options: TrainOptions, *, base_model: Any = None
) -> LambdaChoice | None:
    """Move ``model`` to ``W_base + λ (W_tuned − W_base)`` as the options say; None when interpolation is off.

    ``base_model`` (loaded from ``base.path`` when not given) is needed only for a fully fine-tuned model.
    """
    from training.interpolate import greedy_transcribe, mixer_for, search_lambda

    mode = options.effective_interpolation
    if mode == OFF:
        return None
    mixer = mixer_for(model, base.path, base_model)
    if mode != AUTO:
        mixer.set(float(mode))
        return LambdaChoice(lam=float(mode), mode="fixed", reason="fixed by the interpolation option")
    sets = {name: built.dataset[name] for name in (ACCENT_SET, STANDARD_SET) if name in built.dataset}
    if not sets:
        log.warning("interpolation auto: neither a validation split nor a standard-speech validation set; keeping λ = 1")
        return LambdaChoice(lam=1.0, mode=AUTO, within_limit=False, reason="nothing to validate on: kept the fine-tuned weights")

    def transcribe(data: Any) -> list[str]:
        return greedy_transcribe(
            model, data, processor.tokenizer, language=options.language,
            batch_size=options.eval_batch_size, max_length=options.generation_max_length,
        )

    choice = search_lambda(
        mixer, sets, transcribe, grid=options.interpolation_grid, limit=options.interpolation_limit, progress=options.progress
    )
    log.info("interpolation weight %g: %s", choice.lam, choice.reason)
    return choice


# ---------------------------------------------------------------------------------------------- card


def _recipe_card(options: TrainOptions, prepared: PreparedData, choice: LambdaChoice | None) -> dict[str, Any]:
    built = prepared.built
    replay = None
    if options.effective_replay_ratio > 0:
        replay = {
            "ratio": options.effective_replay_ratio,
            "clips": built.replay_clips,
            "wanted": built.replay_wanted,
            "hours": round(built.replay_hours, 4),
            "pool": prepared.replay_pool,
            "manifest": str(prepared.replay_manifest) if prepared.replay_manifest else None,
        }
    interpolation = None
    if choice is not None:
        interpolation = choice.to_dict()
        interpolation["standard_validation_manifest"] = str(prepared.replay_manifest) if prepared.replay_manifest else None
    return {
        "recipe": options.recipe,
        "replay_clips": built.replay_clips,
        "replay": replay,
        "packed": {"fraction": options.pack_fraction, "windows": built.packed_windows, "clips": built.packed_clips,
                   "plans": max(1, len(built.train_by_epoch))}
        if options.pack_fraction > 0 else None,
        "interpolation_lambda": choice.lam if choice is not None else None,
        "interpolation": interpolation,
    }


# ---------------------------------------------------------------------------------------------- frozen encoder


def _encoder_states_data(model: Any, base: BaseModel, built: BuiltDataset, run_dir: Path, options: TrainOptions) -> tuple[Any, Any]:
    """Train and validation rows as cached encoder states (``frozen_encoder_layers``).

    Under accelerate/torchrun the main process computes them; the others then read its files.
    """
    import torch
    from accelerate import PartialState

    from training.encoder_cache import EncoderStatesDataset, compute_states, encoder_layer_count, states_path

    frozen = options.frozen_encoder_layers
    whole = frozen >= encoder_layer_count(model)
    data: dict[str, Any] = {}
    with PartialState(cpu=not torch.cuda.is_available()).main_process_first():
        for split in ("train", "validation"):
            if split not in built.dataset:
                data[split] = None
                continue
            rows = built.dataset[split]
            path = states_path(run_dir, split, rows, base.path, frozen)
            states = compute_states(
                model, rows.with_format("numpy", columns=["input_features"]), path, frozen_layers=frozen,
                batch_size=options.eval_batch_size, progress=options.progress, desc=f"encoder states ({split})",
            )
            data[split] = EncoderStatesDataset(states, rows["labels"], whole_encoder=whole)
    return data["train"], data["validation"]


def _upper_encoder_trainer(trainer_class: Any) -> Any:
    class UpperEncoderTrainer(trainer_class):
        """Validation from cached lower states: ``generate`` reads ``input_features`` as log-mel (it pads
        them to 30 s), so the encoder's upper layers run here and the decoder gets their output."""

        def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            import torch
            from transformers.modeling_outputs import BaseModelOutput

            inputs = dict(inputs)
            lower = inputs.pop("input_features").to(self.args.device)
            with torch.no_grad():
                encoded = model.get_encoder()(lower).last_hidden_state
            inputs["encoder_outputs"] = BaseModelOutput(last_hidden_state=encoded)
            return super().prediction_step(model, inputs, *args, **kwargs)

    return UpperEncoderTrainer


# ---------------------------------------------------------------------------------------------- train


def train(options: TrainOptions, *, home: str | os.PathLike[str], callbacks: Sequence[Any] = ()) -> TrainResult:
    """Fine-tune, keep the best checkpoint by validation WER and register it as ``<name>-vN``.

    ``callbacks`` are extra ``transformers.TrainerCallback`` objects (benchmarks, tests).
    """
    from training.progress import library_bars

    with library_bars(options.progress):
        return _train(options, home=home, callbacks=callbacks)


def training_threads(environ: Mapping[str, str] | None = None) -> int:
    """torch's threads for training: ``OMP_NUM_THREADS`` when set (torchrun sets it), else this process's
    share of the cores it may use (:func:`ml_backend.engine.cpu_threads`, split between a launcher's
    processes on this node)."""
    from ml_backend.engine import cpu_threads

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
    args = _training_arguments(options, run_dir, has_validation)
    model = build_model(base, options)
    restore_encoder = None
    if options.frozen_encoder_layers:
        train_data, eval_data = _encoder_states_data(model, base, built, run_dir, options)
        from training.encoder_cache import encoder_layer_count, run_upper_layers

        if options.frozen_encoder_layers < encoder_layer_count(model):
            restore_encoder = run_upper_layers(model.get_encoder(), options.frozen_encoder_layers)
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
    trainer_class = _upper_encoder_trainer(Seq2SeqTrainer) if restore_encoder is not None else Seq2SeqTrainer
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
                "processes": trainer.args.world_size,
                **_recipe_card(options, prepared, result.interpolation),
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
