"""Writing the model registry: new versions, CURRENT, promotion history.

Crash safety: a version is written into ``models/.staging-<version>-<pid>/`` and renamed into place
only when complete (``os.replace`` of a directory is atomic on one filesystem), and ``CURRENT`` is
replaced by renaming a fully written temp file. A crash at any point leaves ``CURRENT`` and every
finished version intact; stale staging dirs are swept on the next write.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ml_backend.registry import (
    CARD_FILE,
    CURRENT_FILE,
    RegistryError,
    list_versions,
    parse_version,
    read_current,
    version_dir,
    weights_dir,
)

HISTORY_FILE = "history.jsonl"


def _fsync_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def next_version(models_dir: Path, name: str) -> str:
    numbers = [parse_version(v)[1] for v in list_versions(models_dir) if parse_version(v)[0] == name]
    return f"{name}-v{max(numbers, default=0) + 1}"


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_staging(models_dir: Path) -> None:
    """Remove staging dirs of processes that no longer exist (left by a crash)."""
    root = Path(models_dir)
    if not root.is_dir():
        return
    for child in root.glob(".staging-*"):
        pid = child.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and process_alive(int(pid))):
            shutil.rmtree(child, ignore_errors=True)


@contextlib.contextmanager
def new_version(models_dir: Path, name: str) -> Iterator[tuple[str, Path]]:
    """Yield ``(version, staging_dir)``; on normal exit the dir becomes ``models/<version>``.

    The caller writes ``hf/``, ``ct2/`` and the card (:func:`write_card`) into the staging dir. If the
    block raises, nothing is registered.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    sweep_staging(models_dir)
    version = next_version(models_dir, name)
    staging = models_dir / f".staging-{version}-{os.getpid()}"
    staging.mkdir()
    try:
        yield version, staging
        if not (staging / CARD_FILE).is_file():
            raise RegistryError(f"version {version} has no {CARD_FILE}; not registered")
        os.replace(staging, models_dir / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_card(version_path: Path, card: dict[str, Any]) -> dict[str, Any]:
    card = {"created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **card}
    _fsync_write(Path(version_path) / CARD_FILE, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return card


def update_card(models_dir: Path, version: str, **fields: Any) -> dict[str, Any]:
    path = version_dir(models_dir, version)
    card = json.loads((path / CARD_FILE).read_text())
    card.update(fields)
    _fsync_write(path / CARD_FILE, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return card


def set_current(models_dir: Path, version: str, *, reason: str = "promote") -> str | None:
    """Atomically point CURRENT at ``version``; returns the previous one. Appends to the history."""
    models_dir = Path(models_dir)
    weights_dir(models_dir, version)  # must exist, be complete and have its weights
    previous = read_current(models_dir)
    _fsync_write(models_dir / CURRENT_FILE, version + "\n")
    entry = {
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "current": version,
        "previous": previous,
        "reason": reason,
    }
    with open(models_dir / HISTORY_FILE, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
    return previous


def history(models_dir: Path) -> list[dict[str, Any]]:
    path = Path(models_dir) / HISTORY_FILE
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a torn last line after a crash
            entries.append(json.loads(line))
    return entries


def rollback(models_dir: Path) -> str:
    """Point CURRENT back at the version served before it; returns the new CURRENT."""
    current = read_current(models_dir)
    for entry in reversed(history(models_dir)):
        if entry["current"] == current and entry.get("previous"):
            set_current(models_dir, entry["previous"], reason=f"rollback from {current}")
            return entry["previous"]
    raise RegistryError(f"nothing to roll back to from {current!r} in {models_dir}")
