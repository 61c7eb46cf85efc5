"""Push/pull benchmark against a real Label Studio: prints a table of wall time and peak memory.

    .venv/bin/python bench/push_pull.py [--segments 10000] [--work-dir DIR]

Phases (each habla-ls phase runs the real CLI in a child process; its peak RSS comes from wait4):

1. baseline: Label Studio alone importing the same tasks (data + one prediction), one call per 1,000;
2. push: ``habla-ls sync push`` of N new segments into a fresh project (archive copy included);
3. re-push: the same command with nothing new;
4. pull: ``habla-ls sync pull`` of N annotations (a project whose tasks were imported with annotations);
5. re-pull: the same with nothing new;
6. export alone: Label Studio's JSON export of the N annotated tasks (what every pull used to download),
   on the same server and data: the reference for the first pull;
7. pull after 100 of the annotations were updated through the API.

Targets (issue 2): push within 2x the baseline; unchanged re-push under 5 s; a pull with nothing new
under 5 s; the first pull well under the export alone. The audio is synthetic (short noise bursts with a
tone) because only the data path is measured here.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ml_backend.audio import SAMPLE_RATE, encode_wav  # noqa: E402
from sync.archive import Archive  # noqa: E402
from sync.habla import scan_recordings  # noqa: E402
from sync.labelling_config import LABEL_CONFIG, transcription_result  # noqa: E402
from sync.ls_client import LabelStudioClient  # noqa: E402
from sync.ls_server import start_test_server  # noqa: E402
from sync.push import build_task  # noqa: E402

HABLA_LS = str(Path(sys.executable).parent / "habla-ls")


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


def run_child(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout) of one child process (its own peak, from wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed ({process.returncode}):\n{stderr[-2000:]}")
    return wall, usage.ru_maxrss / 1024, stdout


def _pull_detail(out: str) -> str:
    lines = out.strip().splitlines()
    return " | ".join(line for line in lines if line.startswith(("project ", "read Label Studio")))


def server_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by Label Studio's process group: what a phase cost the
    server, much less sensitive than wall time to other work on a shared machine."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pid:  # process group id
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000, help="tasks per import call (push and baseline)")
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="habla-ls-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    docroot = work / "docroot"
    home = docroot / "home"
    recordings = work / "recordings"
    for path in (docroot, recordings):
        shutil.rmtree(path, ignore_errors=True)
    docroot.mkdir()
    t0 = time.perf_counter()
    write_recordings(recordings, args.segments)
    print(f"wrote {args.segments} segments in {time.perf_counter() - t0:.1f} s under {recordings}", flush=True)

    server = start_test_server(work / f"ls-{os.getpid()}", document_root=docroot)
    rows: list[tuple[str, float, float, str]] = []
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "HABLA_"))}
        env.update(
            LABEL_STUDIO_URL=server.url,
            LABEL_STUDIO_API_KEY=server.token,
            HABLA_LS_HOME=str(home),
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(docroot),
            HABLA_RECORDINGS=str(recordings),
            HABLA_LS_PROJECT="bench push",
        )
        client = LabelStudioClient(server.url, server.token)

        def ls_cpu() -> float:
            return server_cpu_seconds(server.process.pid)

        # The same task payloads the push sends, built outside the timing (archive in a scratch home).
        scratch = Archive(docroot / "scratch" / "archive")
        segments = scan_recordings(recordings).segments
        tasks = []
        for segment in segments:
            clip = scratch.add_file(segment.path)
            tasks.append(build_task(segment, clip, scratch.relative_path(clip.sha256, docroot)))
        baseline_project = client.create_project("bench baseline", LABEL_CONFIG)["id"]
        cpu = ls_cpu()
        start = time.perf_counter()
        for i in range(0, len(tasks), args.batch):
            client.import_tasks(baseline_project, tasks[i : i + args.batch])
        baseline = time.perf_counter() - start
        rows.append((f"Label Studio import alone ({len(tasks)} tasks, {args.batch}/call)", baseline, float("nan"), "", ls_cpu() - cpu))

        cpu = ls_cpu()
        wall, rss, out = run_child([HABLA_LS, "sync", "push", "--no-progress", "--batch-size", str(args.batch)], env)
        rows.append((f"habla-ls sync push ({args.segments} new)", wall, rss, out.strip().splitlines()[0], ls_cpu() - cpu))
        push_wall = wall
        cpu = ls_cpu()
        wall, rss, out = run_child([HABLA_LS, "sync", "push", "--no-progress"], env)
        rows.append(("habla-ls sync push (unchanged re-push)", wall, rss, out.strip().splitlines()[0], ls_cpu() - cpu))
        repush_wall = wall

        # A project whose tasks carry annotations, imported fast; pull reads it by title.
        annotated = [
            {**task, "annotations": [{"result": transcription_result(f"corregido {n}")}]} for n, task in enumerate(tasks)
        ]
        pull_project = client.create_project("bench pull", LABEL_CONFIG)["id"]
        for i in range(0, len(annotated), args.batch):
            client.import_tasks(pull_project, annotated[i : i + args.batch])
        pull_env = {**env, "HABLA_LS_PROJECT": "bench pull"}
        cpu = ls_cpu()
        wall, rss, out = run_child([HABLA_LS, "sync", "pull"], pull_env)
        rows.append((f"habla-ls sync pull ({args.segments} annotations, first)", wall, rss, _pull_detail(out), ls_cpu() - cpu))
        first_pull_wall = wall
        cpu = ls_cpu()
        wall, rss, out = run_child([HABLA_LS, "sync", "pull"], pull_env)
        rows.append(("habla-ls sync pull (nothing new)", wall, rss, _pull_detail(out), ls_cpu() - cpu))
        nothing_new_wall = wall
        # The reference: the JSON export every pull used to download, on the same server and data.
        cpu = ls_cpu()
        start = time.perf_counter()
        exported = client.export_annotations(pull_project)
        export_wall = time.perf_counter() - start
        rows.append((f"Label Studio JSON export alone ({len(exported)} annotated tasks)", export_wall, float("nan"), "", ls_cpu() - cpu))
        changed = exported[:: max(1, len(exported) // 100)][:100]
        for n, task in enumerate(changed):
            client.update_annotation(task["annotations"][0]["id"], transcription_result(f"actualizado {n}"))
        cpu = ls_cpu()
        wall, rss, out = run_child([HABLA_LS, "sync", "pull"], pull_env)
        rows.append((f"habla-ls sync pull ({len(changed)} annotations updated)", wall, rss, _pull_detail(out), ls_cpu() - cpu))
        manifest_rows = sum(1 for _ in (home / "datasets" / "manifest.jsonl").open())
        ls_rss = server_peak_rss(server.process.pid)
        client.close()
    finally:
        server.stop()

    print()
    print(f"{'phase':<58} {'wall s':>8} {'LS CPU s':>9} {'peak RSS MiB':>13}")
    print("-" * 91)
    for name, wall, rss, _, cpu_used in rows:
        rss_text = f"{rss:13.0f}" if rss == rss else f"{'-':>13}"
        print(f"{name:<58} {wall:8.2f} {cpu_used:9.2f} {rss_text}")
    print("-" * 91)
    print(f"push / baseline = {push_wall / baseline:.2f} (target <= 2.0); unchanged re-push {repush_wall:.2f} s (target < 5 s)")
    cpu_of = {name: used for name, *_, used in rows}
    first_cpu = next(v for k, v in cpu_of.items() if k.endswith("annotations, first)"))
    export_cpu = next(v for k, v in cpu_of.items() if k.startswith("Label Studio JSON export alone"))
    print(
        f"first pull / export alone = {first_pull_wall / export_wall:.2f} wall, {first_cpu / export_cpu:.2f} Label Studio CPU;"
        f" pull with nothing new {nothing_new_wall:.2f} s (target < 5 s)"
    )
    print(f"manifest rows: {manifest_rows}; Label Studio server peak RSS: {ls_rss:.0f} MiB")
    print("LS CPU: CPU time Label Studio's processes used in that phase; peak RSS: the habla-ls process (wait4)")
    for name, _, _, detail, _ in rows:
        if detail:
            print(f"  {name}: {detail}")


if __name__ == "__main__":
    main()
