"""Packed windows: training rows of several short clips laid into one 30-s window, as the backend serves them.

The backend decodes short clips several to one 30-s window (``ml_backend.windows.plan_windows``),
so ``pack_fraction`` of the training clips (replay clips included) are trained on that way: after the split and the
filters, a seeded share of the train split's clips is laid into windows as the engine lays them (1-s gaps,
a 1-s margin) and each window becomes one training row whose transcript is its clips' in order. Each
clip is trained on once per epoch, alone or in its window. Validation and test stay one clip per row.
With several plans (``DatasetOptions.pack_plans``) every epoch has its own arrangement (:class:`RowsByEpoch`).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml_backend.audio import SAMPLE_RATE
from ml_backend.decoding import DecodeOptions
from ml_backend.windows import plan_windows
from training.features import PARTS_SEPARATOR, featurize_rows
from training.manifest import DatasetOptions

log = logging.getLogger(__name__)

PACK_PREFIX = "pack:"  # segment_key of a packed training window: pack:<first clip's key>+<other clips>


def plan_packed_windows(seconds: Sequence[float], fraction: float, seed: int, plan: int = 0, tries: int = 200) -> list[list[int]]:
    """Clips (indices into ``seconds``) laid into 30-s windows, ``fraction`` of the packable ones.

    The windows are the engine's own plan (``ml_backend.windows.plan_windows``), fed a seeded random order
    instead of longest-first so that windows mix sessions, speakers and lengths. Clips longer than its
    ``pack_max_clip_seconds`` are never chosen; a window left with one clip is dropped: that clip trains alone.

    Plan number ``plan`` > 0 packs the same chosen clips in another order (other neighbours) into as many
    engine windows, single-clip ones included, so an epoch of any plan has as many rows as plan 0's and the
    trainer counts its steps once; when ``tries`` orders find none, it is plan 0's layout.
    """
    decoding = DecodeOptions()
    eligible = [i for i, s in enumerate(seconds) if 0 < s <= decoding.pack_max_clip_seconds]
    count = round(min(max(fraction, 0.0), 1.0) * len(eligible))
    if count < 2:
        return []

    def lay_out(order: list[int]) -> list[list[int]]:
        return plan_windows([round(seconds[i] * SAMPLE_RATE) for i in order], decoding)

    order = random.Random(seed).sample(eligible, count)
    windows = lay_out(order)
    rng = random.Random(f"{seed}/plan/{plan}")
    for _ in range(tries if plan else 0):
        other = rng.sample(order, len(order))
        found = lay_out(other)
        if len(found) == len(windows):
            order, windows = other, found
            break
    return [[order[j] for j in window] for window in windows if len(window) > 1]


def with_packed_windows(
    train: Any, processor: Any, options: DatasetOptions, cache_dir: Path, rejected: list[str], plan: int = 0
) -> tuple[Any, int, int]:
    """``train`` with ``options.pack_fraction`` of its clips (replay clips too: served windows mix the
    teacher's accent with everyone else's speech) moved into packed windows, rows of their own, laid out by
    plan number ``plan``. A window that fails featurization leaves its clips alone, so none is lost."""
    import datasets

    keys, seconds = train["segment_key"], train["seconds"]
    planned = plan_packed_windows(seconds, options.pack_fraction, options.pack_seed, plan)
    if not planned:
        return train, 0, 0
    paths, texts, sessions, speakers = train["audio_path"], train["transcript"], train["session"], train["speaker"]
    rows = [
        {
            "segment_key": f"{PACK_PREFIX}{keys[w[0]]}+{len(w) - 1}",
            "audio_path": paths[w[0]],
            "transcript": " ".join(texts[i].strip() for i in w),
            "session": sessions[w[0]],
            "speaker": speakers[w[0]],
            "parts": PARTS_SEPARATOR.join(paths[i] for i in w),
        }
        for w in planned
    ]
    windows, problems, _ = featurize_rows(rows, processor, options, cache_dir, split="train-windows")
    rejected.extend(f"{line} (its clips train alone)" for line in problems)
    kept = set(windows["segment_key"])
    packed = {i for w, row in zip(planned, rows, strict=True) if row["segment_key"] in kept for i in w}
    if not packed:
        return train, 0, 0
    alone = train.select([i for i in range(len(train)) if i not in packed])
    return datasets.concatenate_datasets([alone, windows]), len(windows), len(packed)


def epoch_plans(train: Any, first: Any, processor: Any, options: DatasetOptions, cache_dir: Path) -> list[Any]:
    """The train split of every epoch in turn: ``first`` (plan 0), then one per further plan that has as
    many rows (a plan whose windows failed featurization is left out, with a line saying so)."""
    epochs = [first]
    for plan in range(1, options.pack_plans):
        problems: list[str] = []
        data, _, _ = with_packed_windows(train, processor, options, cache_dir, problems, plan=plan)
        if len(data) != len(first):
            log.warning("packed-window plan %d has %d rows, not %d: left out", plan, len(data), len(first))
            continue
        epochs.append(data)
    return epochs


class RowsByEpoch:
    """A training split that is a different dataset every epoch (:attr:`BuiltDataset.train_by_epoch`, in turn).

    The trainer's sampler only needs ``len`` and indexing, and every epoch's dataset has as many rows, so
    the step count it computed once holds. In one process accelerate's dataloader calls :meth:`set_epoch`
    itself at each epoch's start; when it tells a distributed sampler instead, it skips the dataset, so
    :meth:`callback` also switches the epoch before each epoch's batches are drawn (also after a resume,
    from the trainer's own epoch counter), in every process of a run. Both give the same epoch.
    DataLoader workers copy it when an epoch starts, after the switch (workers are not kept across epochs:
    transformers' default, which training.trainer_args keeps).
    """

    def __init__(self, epochs: Sequence[Any]) -> None:
        if not epochs or len({len(e) for e in epochs}) != 1:
            raise ValueError("every epoch needs a dataset, all of one length")
        self.epochs = list(epochs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def current(self) -> Any:
        return self.epochs[self.epoch % len(self.epochs)]

    def __len__(self) -> int:
        return len(self.epochs[0])

    def __getitem__(self, index: int) -> Any:
        return self.current[index]

    def callback(self) -> Any:
        from transformers import TrainerCallback

        rows = self

        class _SwitchEpoch(TrainerCallback):
            def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                # state.epoch is the float progress so far: 2.0 (or 1.9999…) as epoch 3 begins, 2.5 mid-epoch on resume
                rows.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))

        return _SwitchEpoch()

