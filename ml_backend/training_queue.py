"""Training jobs of the backend: ``START_TRAINING`` (and ``POST /train``) queues the finish (``habla-ls
finish``: pull, train, evaluate, gate, export, promote, deliver), run by a background worker as a
subprocess, one at a time across all workers of this backend and every other habla-ls process of the work
dir (the file lock ``<home>/.training.lock``), never inside the request: Label Studio waits 1 s for webhooks.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("habla_ls.backend")

# One training job at a time per work dir, across processes: the backend's queue, `habla-ls finish`
# and `habla-ls watch` all take this lock (habla_ls.training_lock reads these names; ml_backend cannot import it).
TRAINING_LOCK_FILE = ".training.lock"
# The queue holds the lock while its child runs and hands the locked descriptor down under this variable,
# so a child that takes the lock itself (the finish) joins it instead of waiting for its own parent.
TRAINING_LOCK_FD_ENV = "HABLA_LS_TRAINING_LOCK_FD"
DEFAULT_TRAIN_COMMAND = f"{shlex.quote(sys.executable)} -m habla_ls.cli finish"


@dataclass
class TrainingQueue:
    """START_TRAINING → one background job at a time; a request while one runs is coalesced into one more.

    The lock file :data:`TRAINING_LOCK_FILE` keeps several worker processes, `habla-ls watch` and a
    `habla-ls finish` started by hand from training at once; the child inherits the held lock.
    """

    command: str
    home: Path
    state: str = "idle"  # idle | running | queued
    runs: int = 0
    last_exit_code: int | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending = False
        self._thread = threading.Thread(target=self._worker, name="training-queue", daemon=True)
        self._thread.start()

    def submit(self) -> str:
        with self._lock:
            if self.state == "idle":
                self.state = "queued"
            self._pending = True
            self._wake.set()
            return "queued" if self.state == "queued" else "queued-after-current"

    def _worker(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                self._wake.clear()
                if not self._pending:
                    continue
                self._pending = False
                self.state = "running"
            code = self._run_once()
            with self._lock:
                self.runs += 1
                self.last_exit_code = code
                self.state = "queued" if self._pending else "idle"
                if self._pending:
                    self._wake.set()

    def _run_once(self) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        log_path = self.home / "reports" / "backend-training.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # "a": opening must not truncate the holder's pid, which the file carries for messages.
        with open(self.home / TRAINING_LOCK_FILE, "a+") as lock_fh:
            fcntl.flock(lock_fh, fcntl.LOCK_EX)  # one training at a time across processes
            log.info("training job started: %s", self.command)
            env = dict(os.environ, HABLA_LS_HOME=str(self.home), **{TRAINING_LOCK_FD_ENV: str(lock_fh.fileno())})
            with open(log_path, "ab") as out:
                try:
                    code = subprocess.run(
                        shlex.split(self.command), env=env, stdout=out, stderr=subprocess.STDOUT, pass_fds=(lock_fh.fileno(),)
                    ).returncode
                except OSError as exc:
                    log.error("training job could not start: %s", exc)
                    code = 127
            log.info("training job finished with exit code %s (log: %s)", code, log_path)
            return code

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self.state, "runs": self.runs, "last_exit_code": self.last_exit_code}

