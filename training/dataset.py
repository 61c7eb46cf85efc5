"""From the pull manifest to a ``datasets.DatasetDict`` of train / validation / test, split by session.

The split is :mod:`training.manifest`'s (by session, persisted), the features :mod:`training.features`'
(cached), the packed training windows :mod:`training.packing`'s; :func:`build_dataset` puts them together.

Rehearsal: rows of a replay set (``training.replay_set``) join the *train* split only, after the split
is made; they never enter ``splits.json``, validation or test.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.features import CACHE_SUBDIR, featurize_rows
from training.manifest import SPLITS, DatasetError, DatasetOptions, split_id, split_rows
from training.packing import epoch_plans, with_packed_windows

log = logging.getLogger(__name__)


@dataclass
class BuiltDataset:
    dataset: Any  # datasets.DatasetDict with input_features, labels and the row metadata
    rejected: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    hours: dict[str, float] = field(default_factory=dict)
    split_ids: dict[str, str] = field(default_factory=dict)
    cache_files: dict[str, str] = field(default_factory=dict)
    replay_clips: int = 0  # replay rows in the train split (after filtering)
    replay_hours: float = 0.0
    replay_wanted: int = 0  # what the ratio asked for (more than the pool had, or filtered out, shows here)
    packed_windows: int = 0  # train rows that are packed windows
    packed_clips: int = 0  # clips trained on in those windows (sizes count clips, not rows)
    # With DatasetOptions.pack_plans > 1: the train split of each epoch in turn (the first is
    # ``dataset["train"]``); every one has the same clips and the same number of rows.
    train_by_epoch: list[Any] = field(default_factory=list)



def mix_replay(
    train_rows: Sequence[dict[str, Any]], replay_pool: Sequence[dict[str, Any]], ratio: float, seed: int
) -> list[dict[str, Any]]:
    """The replay rows to add to ``train_rows``: ``round(ratio * len(train_rows))`` of the pool, a seeded draw.

    Keys are made distinct from the user's (a ``replay:`` prefix) so a replay clip can never be taken
    for one of theirs, in the cache key or in a report.
    """
    if ratio <= 0 or not replay_pool or not train_rows:
        return []
    count = max(0, round(ratio * len(train_rows)))
    ordered = sorted(replay_pool, key=lambda r: r["segment_key"])
    if count > len(ordered):
        log.warning("replay: %d clips wanted (ratio %g of %d) but the pool has %d; using all of them",
                    count, ratio, len(train_rows), len(ordered))
        chosen = ordered
    else:
        chosen = sorted(random.Random(seed).sample(ordered, count), key=lambda r: r["segment_key"])
    return [{**r, "segment_key": r["segment_key"] if r["segment_key"].startswith("replay:") else f"replay:{r['segment_key']}"}
            for r in chosen]


def build_dataset(
    manifest_path: Path,
    datasets_dir: Path,
    processor: Any,
    options: DatasetOptions | None = None,
    *,
    replay_pool: Sequence[dict[str, Any]] = (),
    replay_ratio: float = 0.0,
    replay_seed: int = 0,
    extra_sets: dict[str, Sequence[dict[str, Any]]] | None = None,
) -> BuiltDataset:
    """Split, filter and featurize the manifest; features are read from the cache when unchanged.

    ``replay_pool`` rows are mixed into the train split (``replay_ratio`` of its clips, drawn with
    ``replay_seed``); ``extra_sets`` (name -> rows) are featurized as further named sets, outside the split.
    """
    import datasets

    options = options if options is not None else DatasetOptions()
    by_split, problems = split_rows(manifest_path, datasets_dir, options)
    replay = mix_replay(by_split["train"], replay_pool, replay_ratio, replay_seed)
    cache_dir = Path(datasets_dir) / CACHE_SUBDIR
    parts = {}
    result = BuiltDataset(dataset=None, rejected=list(problems), replay_wanted=round(replay_ratio * len(by_split["train"])) if replay_pool else 0)
    to_featurize: dict[str, list[dict[str, Any]]] = {split: list(by_split[split]) for split in SPLITS}
    to_featurize["train"] += replay
    for name, rows in (extra_sets or {}).items():
        if name in SPLITS:
            raise ValueError(f"extra set {name!r} would replace a split")
        to_featurize[name] = list(rows)
    for split, rows in to_featurize.items():
        if split in SPLITS:
            result.split_ids[split] = split_id(by_split[split])
        if not rows:
            parts[split] = None
            continue
        data, rejected, cache_file = featurize_rows(rows, processor, options, cache_dir, split=split)
        parts[split] = data
        result.rejected.extend(rejected)
        result.cache_files[split] = cache_file
    if replay and parts.get("train") is not None:
        train = parts["train"]
        flags = [k.startswith("replay:") for k in train["segment_key"]]
        result.replay_clips = sum(flags)
        result.replay_hours = float(sum(s for s, f in zip(train["seconds"], flags, strict=True) if f)) / 3600.0
    if options.pack_fraction > 0 and parts.get("train") is not None:
        unpacked = parts["train"]
        parts["train"], result.packed_windows, result.packed_clips = with_packed_windows(
            unpacked, processor, options, cache_dir, result.rejected
        )
        if options.pack_plans > 1 and result.packed_windows:
            result.train_by_epoch = epoch_plans(unpacked, parts["train"], processor, options, cache_dir)
    for line in result.rejected:
        log.warning("%s", line)
    result.dataset = datasets.DatasetDict({k: v for k, v in parts.items() if v is not None and len(v)})
    for split, data in result.dataset.items():
        result.sizes[split] = len(data) + (result.packed_clips - result.packed_windows if split == "train" else 0)
        result.hours[split] = float(sum(data["seconds"])) / 3600.0
    if result.sizes.get("train", 0) - result.replay_clips <= 0:
        raise DatasetError(f"{manifest_path}: no usable training segments after filtering")
    return result

