"""Every training option in one dataclass (:class:`TrainOptions`, also readable from a TOML/JSON file), and the recipes.

Recipes (:data:`RECIPES`): *rehearsal* mixes a replay set of standard Spanish (``training.replay_set``)
into the train split at ``replay_ratio``; *interpolation* registers ``W_base + λ (W_tuned − W_base)``
with λ chosen on validation (``training.interpolate``); *pullback* registers it with a fixed λ,
:data:`PULLBACK_WEIGHT`. :data:`DEFAULT_RECIPE` is what ``habla-ls train``, ``round --finish`` and the demo
use.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

# Offline: no model hub (DESIGN.md). Every module of a training run imports this one, and sets it before
# transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from training.interpolate import AUTO, DEFAULT_GRID, DEFAULT_LIMIT, OFF, parse_grid, parse_interpolation  # noqa: E402
from training.manifest import DatasetOptions  # noqa: E402

DEFAULT_LEARNING_RATES = {"lora": 1e-3, "full": 1e-5}
# LoRA's 1e-3 was tuned on runs of ~80 optimiser steps (bench/quality: 300 corrections, 4 epochs of 8). A first
# round of a term trains on 20-40 corrections, 10-20 steps, and there 1e-3 for 5 epochs traded standard
# Spanish for the accent. Measured on 40 corrections (15 steps, seed 42, held-out voices and sentences;
# bench/README.md "A short run's learning rate"): accent / standard WER 0.195 / 0.098 at 1e-3 against
# whisper-base's 0.229 / 0.056 (the gate refuses that), 0.154 / 0.056 at half the rate, 0.207 / 0.047 at a
# quarter. So the default rate shrinks with the planned steps below FULL_RATE_STEPS, to half at most.
FULL_RATE_STEPS = 80
MIN_RATE_SHARE = 0.5
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
# Eight tenths of the fine-tune's change, the rest of the way back to the model it started from. Measured on
# five of bench/term's versions (bench/README.md, "Pulling a version back towards its base"), on two
# held-out sets of voices and sentences no training clip has: λ 0.8 beat the versions themselves (λ 1) on
# the mean accent and standard WER of both sets, and λ 0.7 on the accent of both together. The validation
# search (AUTO) cannot see it: on the user's own sessions and the replay voices λ = 1 always looks best.
PULLBACK_WEIGHT = 0.8
RECIPES: dict[str, Recipe] = {
    "plain": Recipe(0.0, OFF),
    "rehearsal": Recipe(REPLAY_RATIO, OFF),
    "interpolation": Recipe(0.0, AUTO),
    "rehearsal+interpolation": Recipe(REPLAY_RATIO, AUTO),
    "rehearsal+pullback": Recipe(REPLAY_RATIO, PULLBACK_WEIGHT),
}
# What `habla-ls train` (and so `habla-ls round --finish` and the demo) uses when no recipe is named:
# bench/quality's rehearsal (bench/README.md, "Rehearsal with natural-voice replay"), pulled back.
DEFAULT_RECIPE = "rehearsal+pullback"


class TrainError(RuntimeError):
    """Training cannot start or finish; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class TrainOptions:
    """Every training knob. ``TrainOptions.from_file("train.toml")`` reads the same names."""

    # what to train
    base: str | None = None  # registry version or model dir; None: as start_from says
    # Where a round's training starts when no base is named: "root" (the model the served version descends
    # from, e.g. whisper-base-v1: every round is one fine-tune of the same model on all corrections so far,
    # so fine-tunes cannot pile up on each other's forgetting; what bench/term measured over whole terms)
    # or "served" (the registry's CURRENT).
    start_from: str = "root"
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
    learning_rate: float | None = None  # default: 1e-3 for LoRA, 1e-5 for full, less for short runs (learning_rate_for)
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
    # clips when it serves (training.packing.plan_packed_windows); the rest train alone, so a clip
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
        """The rate of a run of at least :data:`FULL_RATE_STEPS` steps (:meth:`learning_rate_for` gives any run's)."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATES[self.method]

    def learning_rate_for(self, steps: int) -> float:
        """The rate a run of ``steps`` optimiser steps trains with: the one given, else the default scaled down
        in proportion below :data:`FULL_RATE_STEPS` steps, to no less than :data:`MIN_RATE_SHARE` of it."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LEARNING_RATES[self.method] * min(1.0, max(MIN_RATE_SHARE, steps / FULL_RATE_STEPS))

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


def planned_steps(options: TrainOptions, train_rows: int) -> int:
    """The optimiser steps a run of ``train_rows`` training rows takes on one process."""
    if options.max_steps > 0:
        return options.max_steps
    per_epoch = math.ceil(train_rows / max(1, options.batch_size * options.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * options.epochs))
