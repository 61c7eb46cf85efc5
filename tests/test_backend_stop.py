"""`habla-ls backend serve` keeps a record of itself; `habla-ls backend stop` stops it by that record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from habla_ls.cli_backend import record_path
from ml_backend.process_record import ProcessRecord, is_running, read_record, write_record
from sync.ls_server import free_port
from tests.cli_process import HABLA_LS, cli_env, port_free, run_habla_ls


def _serve(home: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([HABLA_LS, "backend", "serve", "--port", str(port)], env=cli_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_health(process: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the backend did not answer")


def test_backend_serve_then_stop_frees_the_port(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ports = [free_port(), free_port()]
    servers = [_serve(home, port) for port in ports]
    try:
        for server, port in zip(servers, ports, strict=True):
            _wait_health(server, port)  # no model yet: the backend answers anyway
            assert read_record(record_path(home, port)).pid == server.pid
        twice = run_habla_ls("backend", "serve", "--port", str(ports[0]), home=home)
        assert twice.returncode == 1 and f"already runs on port {ports[0]} (pid {servers[0].pid})" in twice.stderr
        assert servers[0].poll() is None and read_record(record_path(home, ports[0])).pid == servers[0].pid

        one = run_habla_ls("backend", "stop", "--port", str(ports[0]), home=home)
        assert one.returncode == 0 and one.stdout.strip() == f"stopped the habla-ls backend on port {ports[0]} (pid {servers[0].pid})"
        assert servers[0].wait(30) is not None and port_free(ports[0])
        assert servers[1].poll() is None  # the other one was not asked to stop

        rest = run_habla_ls("backend", "stop", home=home)
        assert rest.returncode == 0 and rest.stdout.strip() == f"stopped the habla-ls backend on port {ports[1]} (pid {servers[1].pid})"
        assert servers[1].wait(30) is not None and port_free(ports[1])
        assert list((home / "run").glob("backend-*.json")) == []
    finally:
        for server in servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)

    nothing = run_habla_ls("backend", "stop", home=home)
    assert nothing.returncode == 0 and nothing.stdout.strip() == f"no habla-ls backend started from {home.resolve()} is running"


def test_backend_stop_never_signals_a_process_that_took_over_a_stale_pid(tmp_path: Path) -> None:
    home = tmp_path / "home"
    stranger = subprocess.Popen(["sleep", "60"])  # has the pid a killed backend's record names
    try:
        port = free_port()
        write_record(record_path(home, port), ProcessRecord(stranger.pid, port, "1", "backend"))
        assert not is_running(read_record(record_path(home, port)))
        stop = run_habla_ls("backend", "stop", home=home)
        assert stop.returncode == 0 and "had already exited; removed its record" in stop.stdout
        assert stranger.poll() is None and not record_path(home, port).exists()
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.parametrize("content", ["", "{not json", json.dumps({"port": 1})])
def test_an_unreadable_record_is_no_evidence(tmp_path: Path, content: str) -> None:
    path = record_path(tmp_path, 1)
    path.parent.mkdir(parents=True)
    path.write_text(content)
    assert read_record(path) is None
    assert run_habla_ls("backend", "stop", home=tmp_path).stdout.startswith("no habla-ls backend started from")


def test_record_round_trip_and_liveness_of_this_process(tmp_path: Path) -> None:
    me = ProcessRecord.for_process(os.getpid(), 8080, "python", url="http://127.0.0.1:8080")
    write_record(tmp_path / "r.json", me)
    assert read_record(tmp_path / "r.json") == me and is_running(me)
    assert me.started is not None  # Linux: the start time guards against pid reuse
    finished = subprocess.Popen(["true"])
    finished.wait()
    assert not is_running(ProcessRecord(finished.pid, 1, None, "true"))
