"""The recipe applied to a run: replay rows mixed into its data, interpolation weights chosen, both on its card.

*Rehearsal* (``replay_ratio``) adds clips of the replay set (``training.replay_set``) to the train split;
*interpolation* moves the tuned weights towards the base's, λ chosen on validation (``training.interpolate``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.base_model import BaseModel
from training.dataset import BuiltDataset, build_dataset
from training.interpolate import ACCENT_SET, AUTO, OFF, STANDARD_SET, LambdaChoice
from training.manifest import default_manifest
from training.options import TrainError, TrainOptions

log = logging.getLogger(__name__)


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


def recipe_card(options: TrainOptions, prepared: PreparedData, choice: LambdaChoice | None) -> dict[str, Any]:
    """The card's record of the recipe: the replay clips drawn, the packed windows, the interpolation weight."""
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
