"""A record of a server that habla-ls started (one small JSON file), and stopping that server by it.

``habla-ls backend serve`` and ``habla-ls labelstudio up`` write a record when their server is up and
remove it when it stops; ``backend stop`` and ``labelstudio down`` read it, so nobody has to hunt for
processes by name (``pkill -f`` also hits other users' and other projects' servers). A record can
outlive its process (kill -9, a reboot) and by then the pid may belong to something else, so before
anything is signalled the process must still be the one recorded: same kernel start time where the
record has it (Linux ``/proc``), else a command line naming what was started. A stale record is
removed, never acted on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STOP_TIMEOUT = 30.0  # seconds a server gets to shut down cleanly before SIGKILL


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    port: int
    started: str | None = None  # the process's start time in clock ticks since boot (/proc/<pid>/stat)
    command: str = ""  # a word its command line contains, checked when ``started`` is unknown
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**self.extra, "pid": self.pid, "port": self.port, "started": self.started, "command": self.command}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        known = {"pid", "port", "started", "command"}
        return cls(
            int(data["pid"]),
            int(data["port"]),
            str(data["started"]) if data.get("started") is not None else None,
            str(data.get("command") or ""),
            {k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def for_process(cls, pid: int, port: int, command: str, **extra: Any) -> ProcessRecord:
        return cls(pid, port, _proc_stat(pid)[1], command, extra)


def _proc_stat(pid: int) -> tuple[str | None, str | None]:
    """(state letter, start time) from /proc, or (None, None) where there is no /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    # Field 2, the command name, may hold spaces and parentheses: count fields after the last ")".
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], rest[19]  # fields 3 (state) and 22 (starttime)


def _command_line(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None


def is_running(record: ProcessRecord) -> bool:
    """Whether the recorded process is alive and still the one that was recorded."""
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's: the checks below decide whether it is ours
    state, started = _proc_stat(record.pid)
    if state == "Z":
        return False  # exited, waiting for its parent to reap it
    if record.started is not None and started is not None:
        return started == record.started
    command = _command_line(record.pid)
    return command is None or not record.command or record.command in command


def write_record(path: Path, record: ProcessRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=1))
    os.replace(tmp, path)


def read_record(path: Path) -> ProcessRecord | None:
    """The record at ``path``; None when there is none or it cannot be read (then it is no evidence)."""
    try:
        return ProcessRecord.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_record(path: Path, pid: int | None = None) -> None:
    """Removes the record (only if it is still ``pid``'s, when given: a newer server may have replaced it)."""
    if pid is not None:
        current = read_record(path)
        if current is not None and current.pid != pid:
            return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (uvicorn's worker processes), from /proc; empty where there is none."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _signal(pid: int, sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _wait_gone(record: ProcessRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_running(record):
            return True
        time.sleep(0.1)
    return not is_running(record)


def stop_process(record: ProcessRecord, *, group: bool = False, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM (to its process group when ``group``: a server started in a session of its own), a clean
    shutdown awaited, then SIGKILL to it and its children. False when it was not running."""
    if not is_running(record):
        return False
    children = _children(record.pid)
    _signal(record.pid, signal.SIGTERM, group)
    if not _wait_gone(record, timeout):
        _signal(record.pid, signal.SIGKILL, group)
        for child in children:
            _signal(child, signal.SIGKILL, False)
        _wait_gone(record, 5.0)
    return True


def stop_child(process: subprocess.Popen, *, sig: int = signal.SIGTERM, group: bool = True, timeout: float) -> None:
    """Stops a server this process started in a session of its own: ``sig`` (to its process group when
    ``group``), a clean shutdown awaited, then SIGKILL to the whole group."""
    if process.poll() is not None:
        return
    _signal(process.pid, sig, group)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal(process.pid, signal.SIGKILL, True)
        process.wait(5)


def port_answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def wait_port_closed(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while port_answers(port, host):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
