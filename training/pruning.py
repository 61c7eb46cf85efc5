"""Freeing the disk a term of refused candidates takes: their weights go, their cards stay.

Every finish registers a version (whisper-base: about 0.4 GB), promoted or not; over a term the refused
ones add up. Pruning removes the weights of versions that nothing needs any more and keeps each one's
model card (its WERs, gate decision and place in the learning curve), marked ``pruned``. It never
touches a version that:

- is served now, or was served before (a rollback may return to it);
- is the parent of another version (LoRA adapters and `start_from` chains point at it);
- is among the newest ``keep_latest`` never-served versions (``promote --force`` may still want them).

Crash safety: the card is marked first, then the files go, so a version is either whole or marked; a
marked version with files left over is pruned again by the next run. Whatever needs a version's weights
(serving, promoting, evaluating, exporting, delivering, training from it) asks
:func:`ml_backend.registry.weights_dir`, which refuses a marked version in one line naming the prune.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ml_backend.registry import CARD_FILE, PRUNED_FIELD, list_versions, parse_version, read_card, read_current
from training.registry import history, update_card


@dataclass(frozen=True)
class PrunePlan:
    """What a prune would remove (version -> bytes) and why each other version stays (version -> reason)."""

    remove: dict[str, int]
    keep: dict[str, str]

    @property
    def bytes(self) -> int:
        return sum(self.remove.values())


def weights_bytes(version_path: Path) -> int:
    """Bytes under a version dir, its card aside."""
    total = 0
    for root, _dirs, files in os.walk(version_path):
        for name in files:
            path = Path(root) / name
            if path.parent == version_path and name == CARD_FILE:
                continue
            with contextlib.suppress(OSError):  # removed meanwhile
                total += path.stat().st_size
    return total


def _leftovers(version_path: Path) -> list[Path]:
    return [child for child in version_path.iterdir() if child.name != CARD_FILE]


def plan_prune(models_dir: Path, keep_latest: int = 1) -> PrunePlan:
    """Which versions' weights may go, without removing anything."""
    models_dir = Path(models_dir)
    versions = list_versions(models_dir)
    cards = {version: read_card(models_dir / version) for version in versions}
    keep: dict[str, str] = {}
    current = read_current(models_dir)
    if current in cards:
        keep[current] = "served now"
    for entry in history(models_dir):
        for served in (entry.get("current"), entry.get("previous")):
            if served in cards:
                keep.setdefault(served, "served before: a rollback may return to it")
    for version, card in cards.items():
        parent = card.get("parent")
        if parent in cards:
            keep.setdefault(parent, f"parent of {version}")
    candidates = [v for v in versions if v not in keep and not cards[v].get(PRUNED_FIELD)]
    newest = sorted(candidates, key=lambda v: (str(cards[v].get("created", "")), parse_version(v)[1]))
    for version in newest[-keep_latest:] if keep_latest else []:
        keep[version] = "newest candidate: `promote --force` may still want it"
    remove = {}
    for version in versions:
        if version in keep:
            continue
        path = models_dir / version
        if cards[version].get(PRUNED_FIELD) and not _leftovers(path):
            continue  # already pruned
        remove[version] = weights_bytes(path)
    return PrunePlan(remove=remove, keep=keep)


def prune_versions(models_dir: Path, plan: PrunePlan) -> int:
    """Remove the weights ``plan`` names (card first marked); returns the bytes freed."""
    models_dir = Path(models_dir)
    freed = 0
    for version, size in plan.remove.items():
        path = models_dir / version
        card = read_card(path)
        if not card.get(PRUNED_FIELD):
            at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            update_card(models_dir, version, **{PRUNED_FIELD: {"at": at, "bytes": size}})
        for child in _leftovers(path):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        freed += size
    return freed
