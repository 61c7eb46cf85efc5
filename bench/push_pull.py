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
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.push_pull_processes import (  # noqa: E402
    Code,
    Databases,
    cpu_seconds,
    describe_database,
    parse_code,
    run_child,
    server_peak_rss,
)
from bench.push_pull_tables import UPDATED_ANNOTATIONS, Row, Variant, print_tables  # noqa: E402
from ml_backend.audio import SAMPLE_RATE, encode_wav  # noqa: E402
from sync.archive import Archive  # noqa: E402
from sync.habla import scan_recordings  # noqa: E402
from sync.labelling_config import LABEL_CONFIG, transcription_result  # noqa: E402
from sync.listening import page_audio  # noqa: E402
from sync.ls_client import LabelStudioClient  # noqa: E402
from sync.ls_server import LabelStudioServer  # noqa: E402
from sync.segment_tasks import build_task  # noqa: E402


def write_recordings(root: Path, segments: int, per_session: int = 100, seed: int = 0) -> None:
    """Habla sessions of ``per_session`` synthetic segments each: noise bursts with a tone, seeded."""
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


def _pull_detail(out: str) -> str:
    lines = out.strip().splitlines()
    return " | ".join(line for line in lines if line.startswith(("project ", "read Label Studio")))


def build_payloads(recordings: Path, scratch: Path, document_root: Path) -> list[dict[str, Any]]:
    """The task payloads a push sends, built once outside any timing (in a scratch archive)."""
    archive = Archive(scratch)
    tasks = []
    for segment in scan_recordings(recordings).segments:
        clip = archive.add_file(segment.path)
        tasks.append(build_task(segment, clip, page_audio(archive, clip.sha256, document_root)))
    return tasks


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
