"""The work dir's training lock: one training job at a time, across processes.

The finish holds ``<home>/.training.lock``, the lock of the backend's training queue. When the queue runs
the finish as its child, the child joins the lock its parent holds (the descriptor named by
``HABLA_LS_TRAINING_LOCK_FD``) instead of waiting for it. The watch takes it too, without waiting, so that
its count's pull never changes the manifest under a running training.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


class LockBusy(RuntimeError):
    """Another process holds the training lock (``str()`` names it)."""


def lock_path(home: Path) -> Path:
    from ml_backend.training_queue import TRAINING_LOCK_FILE

    return Path(home) / TRAINING_LOCK_FILE


def _inherited_lock(path: Path) -> bool:
    """True when our parent (the backend's queue) holds the lock and passed its descriptor down."""
    from ml_backend.training_queue import TRAINING_LOCK_FD_ENV

    value = os.environ.get(TRAINING_LOCK_FD_ENV, "")
    if not value.isdigit():
        return False
    try:
        held, ours = os.fstat(int(value)), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (ours.st_dev, ours.st_ino)


def lock_holder(home: Path) -> str:
    try:
        pid = lock_path(home).read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def training_lock(home: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold the work dir's training lock; ``wait=False`` raises :class:`LockBusy` instead of waiting."""
    path = lock_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _inherited_lock(path):
        yield
        return
    # "a+": opening must not truncate the pid the holder wrote.
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusy(f"a training job already runs in {home} ({lock_holder(home)})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)
