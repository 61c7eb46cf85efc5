"""Where a push/pull variant runs and what it costs: habla-ls child processes running one checkout's code
each (their own peak RSS and CPU time), and a fresh Label Studio server per variant on each database kind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sync.ls_server import LabelStudioServer, start_test_server

PEAK_FILE_ENV = "HABLA_LS_BENCH_PEAK_FILE"
# Every child writes its peak RSS (KiB) into $HABLA_LS_BENCH_PEAK_FILE at exit.
REPORT_PEAK = (
    "import atexit, os; peak_file = os.environ.get('HABLA_LS_BENCH_PEAK_FILE'); peak_file and atexit.register("
    "lambda: open(peak_file, 'w').write(next(line.split()[1] for line in open('/proc/self/status')"
    " if line.startswith('VmHWM:'))))"
)
# The installed CLI, as its console script runs it.
LAUNCH_INSTALLED = REPORT_PEAK + "; import sys; sys.argv[0] = 'habla-ls'; from habla_ls.cli import main; main()"
# A child running another checkout's CLI: that dir first on sys.path, ahead of the editable install.
LAUNCH = (
    REPORT_PEAK + "; import sys; sys.path.insert(0, sys.argv.pop(1)); sys.argv[0] = 'habla-ls';"
    " from habla_ls.cli import main; main()"
)
WHERE = "import sys; sys.path.insert(0, sys.argv.pop(1)); import habla_ls, sync; print(sync.__file__); print(habla_ls.__file__)"


@dataclass
class Code:
    """The habla-ls code one variant runs: a checkout's directory, or the installed package."""

    label: str
    directory: Path | None  # None: the installed habla-ls

    def command(self) -> list[str]:
        if self.directory is None:
            return [sys.executable, "-c", LAUNCH_INSTALLED]
        return [sys.executable, "-c", LAUNCH, str(self.directory)]

    def check(self) -> str:
        """Where the children import ``sync`` from; fails if it is not this variant's dir."""
        if self.directory is None:
            return "the installed habla-ls"
        done = subprocess.run(
            [sys.executable, "-c", WHERE, str(self.directory)], capture_output=True, text=True, cwd=tempfile.gettempdir()
        )
        if done.returncode != 0:
            raise SystemExit(f"--code-dir {self.directory}: cannot import habla-ls from it:\n{done.stderr[-1000:]}")
        sync_file = Path(done.stdout.splitlines()[0]).resolve()
        if self.directory.resolve() not in sync_file.parents:
            raise SystemExit(f"--code-dir {self.directory}: the child imported sync from {sync_file}, not from that dir")
        return f"sync from {sync_file}"


def run_child(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS MiB, stdout, CPU seconds) of one child process (its own, from wait4 and
    its peak file)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "peak"
        start = time.perf_counter()
        process = subprocess.Popen(
            command, env={**env, PEAK_FILE_ENV: str(peak_file)}, stdout=out, stderr=err, text=True, cwd=cwd
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        try:
            peak_kib = float(peak_file.read_text())
        except (OSError, ValueError):
            peak_kib = float(usage.ru_maxrss)  # no report: an upper bound (the bench's own peak included)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[-4:])} failed ({process.returncode}):\n{stderr[-2000:]}")
    return wall, peak_kib / 1024, stdout, usage.ru_utime + usage.ru_stime


def cpu_seconds(group: int) -> float:
    """CPU time (user + system) used so far by the processes of one process group: what a phase cost
    a server, much less sensitive than wall time to other work on a shared machine."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def server_peak_rss(pid: int) -> float:
    """Peak RSS (VmHWM) of Label Studio's process tree root, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Databases:
    """Label Studio servers on each database kind asked for, one fresh server per variant."""

    def __init__(self, work: Path, document_root: Path):
        self.work = work
        self.document_root = document_root
        self.cluster: Any = None

    def start(self, database: str, name: str) -> tuple[LabelStudioServer, int | None]:
        """(server, process group of its database server when the bench runs it, else None)."""
        work_dir = self.work / f"ls-{name}-{os.getpid()}"
        shutil.rmtree(work_dir, ignore_errors=True)
        if database == "sqlite":
            return start_test_server(work_dir, document_root=self.document_root), None
        if database == "postgresql":
            cluster = self._cluster()
            server = start_test_server(work_dir, document_root=self.document_root, database_url=cluster.new_database())
            return server, cluster.process.pid
        server = start_test_server(work_dir, document_root=self.document_root, database_url=database)
        return server, None

    def _cluster(self) -> Any:
        if self.cluster is None:
            try:
                from sync.ls_server import start_throwaway_postgres
            except ImportError:
                raise SystemExit("--database postgresql: this checkout's sync.ls_server has no PostgreSQL support") from None
            self.cluster = start_throwaway_postgres(durable=True)
        return self.cluster

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


def describe_database(database: str) -> str:
    """The database kind as the tables name it (a URL's password redacted)."""
    if database in ("sqlite", "postgresql"):
        return {"sqlite": "SQLite", "postgresql": "PostgreSQL (throw-away cluster, fsync on)"}[database]
    try:
        from sync.postgres import PostgresDsn

        return f"PostgreSQL {PostgresDsn.parse(database).redacted()}"
    except (ImportError, ValueError):
        return "PostgreSQL (--database-url)"


def parse_code(spec: str) -> Code:
    """A ``--code-dir [LABEL=]DIR``: the label defaults to the directory's name."""
    label, sep, directory = spec.partition("=")
    if not sep:
        label, directory = Path(spec).resolve().name or spec, spec
    path = Path(directory).expanduser().resolve()
    if not (path / "sync" / "ls_client.py").is_file():
        raise SystemExit(f"--code-dir {spec}: {path} is not a habla-ls checkout (no sync/ls_client.py)")
    return Code(label, path)
