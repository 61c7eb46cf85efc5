"""Training-time augmentation of log-mel features: other voices than the ones the clips were spoken by.

A teacher's clips come from a handful of voices, and a model fine-tuned on them learns those voices
along with the accent (bench/quality: trained on female voices only, the accent error fell by 46 % on a
held-out female voice and by 24 % on a male one). Vocal-tract-length perturbation (Jaitly & Hinton,
2013) moves the formants as a longer or shorter vocal tract would, by stretching the frequency axis of
the spectrum. Here it stretches the mel axis of Whisper's log-mel features by a random factor each time a
clip is seen, so every epoch hears each sentence from a slightly different speaker. Only the training
split is warped; validation and test clips are scored as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def warp_mel_axis(features: np.ndarray, factor: float) -> np.ndarray:
    """``features`` (mel bins x frames) with bin ``f`` taken from ``f * factor``: > 1 lowers the formants, < 1 raises them."""
    bins = features.shape[0]
    source = np.clip(np.arange(bins, dtype=np.float64) * factor, 0.0, bins - 1.0)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, bins - 1)
    weight = (source - low)[:, None].astype(features.dtype)
    return features[low] * (1 - weight) + features[high] * weight


class MelWarpedRows:
    """A training split whose ``input_features`` are warped by a factor drawn from ``[1 - width, 1 + width]`` per access."""

    def __init__(self, rows: Any, width: float, seed: int) -> None:
        self.rows = rows
        self.width = float(width)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._worker_seed: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _generator(self) -> np.random.Generator:
        """The main process's generator, or in a DataLoader worker one seeded from the worker's own seed.

        Each worker holds a copy of this object made when the epoch's workers start, so a shared generator
        would give every worker, and every epoch, the same sequence of factors. torch draws a new seed per
        worker and epoch (from the seeded global generator, so a run stays reproducible).
        """
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        if info is None:
            return self.rng
        if self._worker_seed != info.seed:
            self._worker_seed = info.seed
            self.rng = np.random.default_rng([self.seed, info.seed])
        return self.rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.rows[index])
        factor = self._generator().uniform(1.0 - self.width, 1.0 + self.width)
        row["input_features"] = warp_mel_axis(np.asarray(row["input_features"], dtype=np.float32), factor)
        return row
