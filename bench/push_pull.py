"""Push/pull benchmark against a real Label Studio: wall time, server CPU and peak memory per phase.

    .venv/bin/python bench/push_pull.py [--segments 10000] [--work-dir DIR] [--repeat 3] [--json OUT]
        [--code-dir before=/tmp/before --code-dir after=.] [--database sqlite --database postgresql]
        [--database-url postgresql://user:pass@host:port/db]

Each ``--code-dir`` is one variant: its ``habla-ls`` runs from that checkout's code (the child puts the
dir first on ``sys.path`` and the bench checks where ``sync`` was imported from); without one, the
installed ``habla-ls``. Each database is one more axis: ``sqlite`` (a copy of the cached template),
``postgresql`` (a throw-away cluster from the cached template, see :mod:`sync.ls_server`) and
``--database-url`` (an existing PostgreSQL; every variant runs on it). Every (database, variant) gets a
fresh Label Studio, and its baselines are measured on that same server right beside its own phases.

Phases (each habla-ls phase runs the real CLI in a child process, which reports its own peak RSS: the
``VmHWM`` of its process at exit; ``ru_maxrss`` from wait4 would also count this bench's memory, which
Linux carries across the child's exec):

1. Label Studio alone importing the same tasks (data + one prediction), one call per ``--batch``: the
   baseline of the push;
2. push: ``habla-ls sync push`` of N new segments into a fresh project (archive copy included);
3. re-push: the same command with nothing new;
4. pull: ``habla-ls sync pull`` of N annotations (a project whose tasks were imported with annotations);
5. re-pull: the same with nothing new;
6. Label Studio's JSON export of the N annotated tasks, on the same server and data: the baseline of
   the first pull;
7. pull after 100 of the annotations were updated through the API.

Targets (issue 11): push <= 1.5x Label Studio's import; first pull <= 1.1x its JSON export; nothing-new
pull < 2 s; unchanged re-push of 10,000 segments < 2 s; habla-ls peak RSS < 300 MB. The audio is
synthetic (short noise bursts with a tone) because only the data path is measured here. "server CPU"
is the CPU time Label Studio's processes used in the phase, plus PostgreSQL's when the bench started it;
"CPU" is the habla-ls process's own (both far less sensitive than wall time to other work on the machine).
The load average is printed beside each table: on a shared machine, compare runs made under like loads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_backend.audio import SAMPLE_RATE, encode_wav  # noqa: E402
from sync.archive import Archive  # noqa: E402
from sync.habla import scan_recordings  # noqa: E402
from sync.labelling_config import LABEL_CONFIG, transcription_result  # noqa: E402
from sync.ls_client import LabelStudioClient  # noqa: E402
from sync.ls_server import LabelStudioServer, start_test_server  # noqa: E402
from sync.push import build_task  # noqa: E402

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
UPDATED_ANNOTATIONS = 100

# (key, label, target, baseline key): one table row each, in this order.
PHASES = [
    ("import", "Label Studio import alone", "", None),
    ("push", "habla-ls sync push (all new)", "<= 1.5x import", "import"),
    ("repush", "habla-ls sync push (unchanged)", "< 2 s at 10k", None),
    ("export", "Label Studio JSON export alone", "", None),
    ("pull", "habla-ls sync pull (first)", "<= 1.1x export", "export"),
    ("repull", "habla-ls sync pull (nothing new)", "< 2 s", None),
    ("pull100", f"habla-ls sync pull ({UPDATED_ANNOTATIONS} updated)", "", None),
]
RATIO_LIMITS = {"push": 1.5, "pull": 1.1}
SECONDS_LIMITS = {"repull": 2.0}
RSS_LIMIT_MIB = 300


@dataclass
class Code:
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


@dataclass
class Row:
    wall: float
    server_cpu: float
    rss: float | None = None  # MiB, habla-ls phases only
    detail: str = ""
    cpu: float | None = None  # the habla-ls process's own CPU seconds


@dataclass
class Variant:
    database: str
    code: Code
    rows: dict[str, Row] = field(default_factory=dict)
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    imported_from: str = ""
    server_peak_rss: float = float("nan")
    manifest_rows: int = 0


def write_recordings(root: Path, segments: int, per_session: int = 100, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    for s in range(-(-segments // per_session)):
        name = f"bench_{20250101 + s // 28 * 100 + s % 28:08d}_{90000 + s % 10:06d}"
        session = root / name
        session.mkdir(parents=True)
        entries = []
        for n in range(1, min(per_session, segments - s * per_session) + 1):
            seconds = 0.8 + 0.4 * rng.random()
            samples = 0.05 * rng.standard_normal(int(seconds * SAMPLE_RATE)).astype(np.float32)
            samples[: len(t)] += (0.2 * np.sin(2 * np.pi * (150 + n) * t[: len(samples)])).astype(np.float32)
            filename = f"segment_{n:03d}.wav"
            (session / filename).write_bytes(encode_wav(samples))
            entries.append({"segment_id": n, "filename": filename, "transcript": f"frase número {n} de la sesión {s}", "confidence": -0.3})
        (session / "metadata.json").write_text(json.dumps({"session_id": name, "speaker": "profesora", "segments": entries}))
        (session / "ground_truth.json").write_text(json.dumps({"segments": entries}))


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


def _pull_detail(out: str) -> str:
    lines = out.strip().splitlines()
    return " | ".join(line for line in lines if line.startswith(("project ", "read Label Studio")))


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


def build_payloads(recordings: Path, scratch: Path, document_root: Path) -> list[dict[str, Any]]:
    """The task payloads a push sends, built once outside any timing (in a scratch archive)."""
    archive = Archive(scratch)
    tasks = []
    for segment in scan_recordings(recordings).segments:
        clip = archive.add_file(segment.path)
        tasks.append(build_task(segment, clip, archive.relative_path(clip.sha256, document_root)))
    return tasks


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
    if database in ("sqlite", "postgresql"):
        return {"sqlite": "SQLite", "postgresql": "PostgreSQL (throw-away cluster, fsync on)"}[database]
    try:
        from sync.postgres import PostgresDsn

        return f"PostgreSQL {PostgresDsn.parse(database).redacted()}"
    except (ImportError, ValueError):
        return "PostgreSQL (--database-url)"


def measure(
    variant: Variant, server: LabelStudioServer, db_group: int | None, tasks: list[dict[str, Any]], args: argparse.Namespace,
    home: Path, recordings: Path,
) -> None:
    """Runs every phase of one variant on its own fresh server; fills ``variant.rows``."""

    def server_cpu() -> float:
        return cpu_seconds(server.process.pid) + (cpu_seconds(db_group) if db_group is not None else 0.0)

    def timed(key: str, action: Callable[[], tuple[float | None, str, float | None]], repeat: int = 1) -> None:
        """One row; a phase that changes nothing (re-push, re-pull) runs ``repeat`` times and keeps its
        median run, which a busy machine disturbs less than any single run."""
        runs = []
        for _ in range(repeat):
            cpu = server_cpu()
            start = time.perf_counter()
            rss, detail, own_cpu = action()
            wall = time.perf_counter() - start
            runs.append(Row(wall, server_cpu() - cpu, rss, detail, own_cpu))
        runs.sort(key=lambda row: row.wall)
        chosen = runs[len(runs) // 2]
        if repeat > 1:
            chosen.detail += f" (median of {repeat} runs: {', '.join(f'{r.wall:.2f}' for r in runs)} s)"
        variant.rows[key] = chosen

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "HABLA_", "PYTHONPATH"))}
    env.update(
        LABEL_STUDIO_URL=server.url,
        LABEL_STUDIO_API_KEY=server.token,
        HABLA_LS_HOME=str(home),
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(home.parent),
        HABLA_RECORDINGS=str(recordings),
        HABLA_LS_PROJECT="bench push",
    )
    pull_env = {**env, "HABLA_LS_PROJECT": "bench pull"}
    habla_ls = variant.code.command()

    def cli(child_env: dict[str, str], *arguments: str, detail: Callable[[str], str]) -> tuple[float, str, float]:
        _, rss, out, own_cpu = run_child([*habla_ls, *arguments], child_env, cwd=home.parent)
        return rss, detail(out), own_cpu

    def first_line(out: str) -> str:
        return out.strip().splitlines()[0]

    with LabelStudioClient(server.url, server.token) as client:
        baseline_project = client.create_project("bench baseline", LABEL_CONFIG)["id"]

        def import_alone() -> tuple[None, str, None]:
            for i in range(0, len(tasks), args.batch):
                client.import_tasks(baseline_project, tasks[i : i + args.batch])
            return None, f"{len(tasks)} tasks, {args.batch} per call", None

        timed("import", import_alone)
        timed("push", lambda: cli(env, "sync", "push", "--no-progress", "--batch-size", str(args.batch), detail=first_line))
        timed("repush", lambda: cli(env, "sync", "push", "--no-progress", detail=first_line), args.repeat)

        # A project whose tasks carry annotations, imported fast; pull reads it by title.
        annotated = [{**task, "annotations": [{"result": transcription_result(f"corregido {n}")}]} for n, task in enumerate(tasks)]
        pull_project = client.create_project("bench pull", LABEL_CONFIG)["id"]
        for i in range(0, len(annotated), args.batch):
            client.import_tasks(pull_project, annotated[i : i + args.batch])
        timed("pull", lambda: cli(pull_env, "sync", "pull", detail=_pull_detail))
        timed("repull", lambda: cli(pull_env, "sync", "pull", detail=_pull_detail), args.repeat)
        exported: list[dict[str, Any]] = []

        def export_alone() -> tuple[None, str, None]:
            exported.extend(client.export_annotations(pull_project))
            return None, f"{len(exported)} annotated tasks", None

        # The reference: the JSON export every pull used to download, on the same server and data.
        timed("export", export_alone)
        changed = exported[:: max(1, len(exported) // UPDATED_ANNOTATIONS)][:UPDATED_ANNOTATIONS]
        for n, task in enumerate(changed):
            client.update_annotation(task["annotations"][0]["id"], transcription_result(f"actualizado {n}"))
        timed("pull100", lambda: cli(pull_env, "sync", "pull", detail=_pull_detail))
    variant.manifest_rows = sum(1 for _ in (home / "datasets" / "manifest.jsonl").open())
    variant.server_peak_rss = server_peak_rss(server.process.pid)


def _ratio(variant: Variant, key: str, baseline: str | None) -> float | None:
    if baseline is None or key not in variant.rows or baseline not in variant.rows:
        return None
    return variant.rows[key].wall / variant.rows[baseline].wall


def _load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def print_tables(variants: list[Variant], segments: int) -> None:
    for database in dict.fromkeys(v.database for v in variants):
        group = [v for v in variants if v.database == database]
        print()
        print(f"{describe_database(database)}, {segments} segments")
        head = f"{'phase':<40} {'target':<15}"
        sub = f"{'':<40} {'':<15}"
        for v in group:
            head += f" | {v.code.label:<40}"
            sub += f" | {'wall s':>7} {'ratio':>6} {'srv CPU':>8} {'CPU':>6} {'RSS MiB':>8}"
        print(head)
        print(sub)
        print("-" * len(sub))
        for key, label, target, baseline in PHASES:
            line = f"{label:<40} {target:<15}"
            for v in group:
                row = v.rows.get(key)
                if row is None:
                    line += f" | {'-':>7} {'':>6} {'':>8} {'':>6} {'':>8}"
                    continue
                ratio = _ratio(v, key, baseline)
                ratio_text = f"{ratio:.2f}x" if ratio is not None else ""
                rss_text = f"{row.rss:.0f}" if row.rss is not None else "-"
                cpu_text = f"{row.cpu:.2f}" if row.cpu is not None else "-"
                line += f" | {row.wall:7.2f} {ratio_text:>6} {row.server_cpu:8.2f} {cpu_text:>6} {rss_text:>8}"
            print(line)
        print("-" * len(sub))
        for v in group:
            print(
                f"{v.code.label}: load average (1/5/15 min) {_load(v.load_before)} before, {_load(v.load_after)} after; "
                f"{v.imported_from}; manifest rows {v.manifest_rows}; Label Studio peak RSS {v.server_peak_rss:.0f} MiB"
            )
            print(f"  {verdict(v, segments)}")
            for key, label, *_ in PHASES:
                row = v.rows.get(key)
                if row is not None and row.detail:
                    print(f"    {label}: {row.detail}")


def verdict(variant: Variant, segments: int) -> str:
    """The targets, met or not, in one line."""
    parts = []
    for key, limit in RATIO_LIMITS.items():
        ratio = _ratio(variant, key, dict((k, b) for k, _, _, b in PHASES)[key])
        if ratio is not None:
            parts.append(f"{key} {ratio:.2f}x {'ok' if ratio <= limit else 'MISSED'} (<= {limit}x)")
    for key, limit in SECONDS_LIMITS.items():
        if key in variant.rows:
            wall = variant.rows[key].wall
            parts.append(f"{key} {wall:.2f} s {'ok' if wall < limit else 'MISSED'} (< {limit:.0f} s)")
    if "repush" in variant.rows:
        wall = variant.rows["repush"].wall
        scaled = "" if segments == 10_000 else f", target is for 10,000 segments, this run has {segments}"
        parts.append(f"repush {wall:.2f} s ({'ok' if wall < 2.0 else 'over 2 s'}{scaled})")
    peak = max((r.rss for r in variant.rows.values() if r.rss is not None), default=0.0)
    parts.append(f"peak RSS {peak:.0f} MiB {'ok' if peak < RSS_LIMIT_MIB else 'MISSED'} (< {RSS_LIMIT_MIB})")
    return "; ".join(parts)


def parse_code(spec: str) -> Code:
    label, sep, directory = spec.partition("=")
    if not sep:
        label, directory = Path(spec).resolve().name or spec, spec
    path = Path(directory).expanduser().resolve()
    if not (path / "sync" / "ls_client.py").is_file():
        raise SystemExit(f"--code-dir {spec}: {path} is not a habla-ls checkout (no sync/ls_client.py)")
    return Code(label, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000, help="tasks per import call (push and baseline)")
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--code-dir", action="append", default=[], metavar="[LABEL=]DIR",
                        help="run habla-ls from this checkout's code (repeatable: one variant each)")
    parser.add_argument("--database", action="append", choices=["sqlite", "postgresql"], default=[],
                        help="database of Label Studio (repeatable; default sqlite)")
    parser.add_argument("--database-url", action="append", default=[], metavar="URL",
                        help="also run on this existing PostgreSQL database (repeatable)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of the phases that change nothing (re-push, re-pull); the median is kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    codes = [parse_code(spec) for spec in args.code_dir] or [Code("current", None)]
    databases = list(dict.fromkeys(args.database)) + args.database_url or ["sqlite"]
    for code in codes:
        print(f"variant {code.label}: {code.check()}", flush=True)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="habla-ls-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    document_root = work / "docroot"
    recordings = work / "recordings"
    for path in (document_root, recordings):
        shutil.rmtree(path, ignore_errors=True)
    document_root.mkdir()
    t0 = time.perf_counter()
    write_recordings(recordings, args.segments)
    tasks = build_payloads(recordings, document_root / "scratch" / "archive", document_root)
    print(f"wrote {args.segments} segments in {time.perf_counter() - t0:.1f} s under {recordings}", flush=True)

    servers = Databases(work, document_root)
    variants: list[Variant] = []
    try:
        for database in databases:
            for n, code in enumerate(codes):
                variant = Variant(database, code, imported_from=code.check())
                name = f"{len(variants)}-{'pg' if database != 'sqlite' else 'sqlite'}-{n}"
                home = document_root / f"home-{name}"
                print(f"{describe_database(database)}, {code.label}: running ...", flush=True)
                variant.load_before = os.getloadavg()
                server, db_group = servers.start(database, name)
                try:
                    measure(variant, server, db_group, tasks, args, home, recordings)
                finally:
                    server.stop()
                variant.load_after = os.getloadavg()
                variants.append(variant)
    finally:
        servers.close()

    print_tables(variants, args.segments)
    if args.json:
        records = [
            {**{k: v for k, v in asdict(variant).items() if k != "code"}, "code": variant.code.label,
             "code_dir": str(variant.code.directory or ""), "database": describe_database(variant.database)}
            for variant in variants
        ]
        args.json.write_text(json.dumps({"segments": args.segments, "batch": args.batch, "variants": records}, indent=2))


if __name__ == "__main__":
    main()
