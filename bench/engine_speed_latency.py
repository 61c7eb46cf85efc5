"""``bench/engine_speed.py --latency``: p50/p95 of one /predict through the real backend server."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.engine_speed_clips import ensure_models, make_clips


def _start_backend(ct2: Path, home: Path, beam_size: int) -> tuple[subprocess.Popen, str]:
    """The real backend (uvicorn, the served defaults but the beam) on a free port of 127.0.0.1."""
    import httpx

    from sync.ls_server import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "BACKEND_BEARER_TOKEN")}
    env.update(HABLA_LS_HOME=str(home), HABLA_LS_MODEL=str(ct2), HABLA_LS_DEVICE="cpu", HABLA_LS_BEAM_SIZE=str(beam_size),
               LABEL_STUDIO_URL="http://127.0.0.1:9")
    log = open(home / "backend.log", "wb")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "ml_backend.server:app_factory", "--host", "127.0.0.1",
         "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"backend exited: {(home / 'backend.log').read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).json().get("status") == "UP":
                return process, url
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.3)
    process.kill()
    raise SystemExit("backend did not come up in 120 s")


def latency_table(count: int, beams: list[int]) -> None:
    """p50/p95 of one /predict carrying one 3-5 s task, as Label Studio sends it when a task opens without
    a prediction: each clip new to the backend (cold), then the same clips again (answered from the
    backend's prediction cache, what every later opening of the task costs)."""
    import hashlib

    import httpx
    import numpy as np

    ct2, _hf = ensure_models()
    with tempfile.TemporaryDirectory(prefix="engine-latency-") as tmp:
        tmp_path = Path(tmp)
        rows = [r for r in make_clips(3 * count, tmp_path) if 3.0 <= r["seconds"] <= 5.0][:count]
        load = os.getloadavg()[0]
        print(f"{len(rows)} espeak-ng clips of 3-5 s, one task per /predict, real backend (uvicorn), whisper-base "
              f"int8; {os.cpu_count()} CPU cores; load average {load:.2f}", flush=True)
        table = []
        for beam in beams:
            home = tmp_path / f"home-beam{beam}"
            (home / "archive").mkdir(parents=True)
            tasks = []
            for i, row in enumerate(rows):
                wav = Path(row["path"]).read_bytes()
                sha = hashlib.sha256(wav).hexdigest()
                target = home / "archive" / sha[:2] / f"{sha}.wav"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wav)
                tasks.append({"id": i + 1, "data": {"audio": f"/data/upload/{i + 1}.wav", "sha256": sha}})
            process, url = _start_backend(ct2, home, beam)
            try:
                with httpx.Client(timeout=120) as client:
                    client.post(url + "/predict", json={"tasks": [tasks[0]]}).raise_for_status()  # warm-up
                    for kind in ("cold", "cached"):
                        times = []
                        for task in tasks[1:] if kind == "cold" else tasks:
                            started = time.perf_counter()
                            client.post(url + "/predict", json={"tasks": [task]}).raise_for_status()
                            times.append(time.perf_counter() - started)
                        table.append((beam, kind, len(times), float(np.percentile(times, 50)),
                                      float(np.percentile(times, 95)), os.getloadavg()[0]))
                        print(f"  beam {beam}, {kind}: p50 {table[-1][3]:.3f} s, p95 {table[-1][4]:.3f} s", flush=True)
            finally:
                os.killpg(process.pid, 15)
                process.wait(30)
    header = f"{'beam':>4} {'prediction':>10} {'requests':>8} {'p50 s':>7} {'p95 s':>7} {'loadavg':>7}"
    print()
    print(header)
    print("-" * len(header))
    for beam, kind, n, p50, p95, after in table:
        print(f"{beam:>4} {kind:>10} {n:>8} {p50:>7.3f} {p95:>7.3f} {after:>7.2f}")
    print("cold: the clip is new to the backend (decoded); cached: asked again (the backend's prediction cache)")
