"""The Label Studio test server, the client's reusable calls (views, lookups by ext_id, predictions), and
`habla-ls labelstudio up`/`down`."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ml_backend.process_record import ProcessRecord, write_record
from sync.labelling_config import LABEL_CONFIG, transcription_result
from sync.ls_client import LabelStudioClient, LabelStudioError, ext_id_filter
from sync.ls_server import (
    CREDENTIALS_FILE,
    RECORD_COMMAND,
    SERVER_RECORD,
    Credentials,
    LabelStudioServer,
    copy_template,
    free_port,
    running_server,
    template_credentials,
)

pytestmark = pytest.mark.labelstudio

HABLA_LS = str(Path(sys.executable).parent / "habla-ls")


def test_credentials_are_hidden_and_saved_private(tmp_path: Path) -> None:
    credentials = Credentials.generate()
    assert credentials.token not in repr(credentials) and credentials.password not in repr(credentials)
    credentials.save(tmp_path / "c.json")
    assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o600
    assert Credentials.load(tmp_path / "c.json") == credentials


def test_client_round_trip_on_the_real_server(label_studio, unique_project_title) -> None:
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        assert client.whoami()["email"]
        project, created = client.ensure_project(unique_project_title, LABEL_CONFIG)
        assert created and client.ensure_project(unique_project_title, LABEL_CONFIG) == (client.find_project(unique_project_title), False)
        tasks = [{"data": {"audio": f"/x/{i}.wav", "ext_id": f"s/segment_{i:03d}.wav"}} for i in range(120)]
        ids = client.import_tasks(project["id"], tasks)
        assert len(ids) == 120 and ids == sorted(ids)
        assert [t["id"] for t in client.iter_tasks(project["id"], page_size=50)] == ids  # pages joined
        found = client.tasks_by_ext_id(project["id"], ["s/segment_007.wav", "s/segment_119.wav", "s/none.wav"])
        assert found == {"s/segment_007.wav": [ids[7]], "s/segment_119.wav": [ids[119]]}
        assert client.create_predictions(project["id"], [{"task": ids[0], "result": transcription_result("hola"), "score": 0.3, "model_version": "v1"}]) == 1
        client.update_task_data(ids[0], {"speaker": "alumno"})
        assert client.get_task(ids[0])["data"] == {"audio": "/x/0.wav", "ext_id": "s/segment_000.wav", "speaker": "alumno"}
        view = client.create_view(project["id"], "doubtful first", filters=[ext_id_filter("s/segment_001.wav")], ordering=["tasks:predictions_score"])
        assert [t["id"] for t in client.iter_tasks(project["id"], view_id=view["id"])] == [ids[1]]
        with pytest.raises(LabelStudioError, match="must be 3 to 50 characters"):
            client.create_project("x" * 51, LABEL_CONFIG)
        client.delete_project(project["id"])
        assert client.find_project(unique_project_title) is None


def _port_free(port: int) -> bool:
    """Nothing accepts connections on it, and a new server could bind it (as servers do, SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cli_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "HABLA_"))}
    return {**env, "HABLA_LS_HOME": str(home)}


def _habla_ls(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([HABLA_LS, *args], env=_cli_env(home), capture_output=True, text=True, timeout=120)


def _ready_data_dir(data_dir: Path) -> Path:
    """A migrated data dir with its credentials, so `labelstudio up` starts in seconds, not after migrations."""
    copy_template(data_dir)
    template_credentials().save(data_dir / CREDENTIALS_FILE)
    return data_dir


def test_labelstudio_up_then_down_from_another_shell_frees_the_port(tmp_path: Path) -> None:
    home = tmp_path / "home"
    data_dir = _ready_data_dir(home / "label-studio")
    port = free_port()
    up = subprocess.Popen([HABLA_LS, "labelstudio", "up", "--port", str(port)], env=_cli_env(home),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while running_server(data_dir) is None:
            assert up.poll() is None and time.monotonic() < deadline, up.stdout.read() if up.poll() is not None else "not up"
            time.sleep(0.2)
        record = running_server(data_dir)
        assert record.port == port and record.extra["owner"]["pid"] == up.pid
        assert httpx.get(f"http://127.0.0.1:{port}/api/current-user/whoami", timeout=10,
                         headers={"Authorization": f"Token {template_credentials().token}"}).status_code == 200
        twice = _habla_ls("labelstudio", "up", "--port", str(free_port()), home=home)
        assert twice.returncode == 1 and f"Label Studio already runs from {data_dir.resolve()}" in twice.stderr

        down = _habla_ls("labelstudio", "down", home=home)
        assert down.returncode == 0, down.stderr
        assert down.stdout.strip() == f"stopped Label Studio on 127.0.0.1:{port} (pid {record.pid})"
        assert up.wait(30) == 0 and "stopping Label Studio" in up.stdout.read()  # `up` stopped it, as on Ctrl-C
        assert _port_free(port) and not (data_dir / SERVER_RECORD).exists()
        with pytest.raises(ProcessLookupError):
            os.kill(record.pid, 0)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)

    again = _habla_ls("labelstudio", "down", home=home)
    assert again.returncode == 0 and again.stdout.strip() == f"no Label Studio started by habla-ls is running from {data_dir.resolve()}"


def test_labelstudio_down_stops_a_server_nobody_watches_and_never_a_stranger(tmp_path: Path) -> None:
    # The demo leaves its server running with no `up` process watching it.
    data_dir = _ready_data_dir(tmp_path / "demo" / "label-studio")
    server = LabelStudioServer(data_dir, template_credentials()).start()
    try:
        down = _habla_ls("labelstudio", "down", "--data-dir", str(data_dir), home=tmp_path / "home")
        assert down.returncode == 0 and down.stdout.startswith(f"stopped Label Studio on 127.0.0.1:{server.port}")
        assert server.process.wait(10) is not None and _port_free(server.port)
    finally:
        server.stop()

    # A record left by a server that died with kill -9, whose pid now belongs to another process.
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        stale = ProcessRecord(stranger.pid, free_port(), "1", RECORD_COMMAND)  # started at tick 1: not this one
        write_record(data_dir / SERVER_RECORD, stale)
        down = _habla_ls("labelstudio", "down", "--data-dir", str(data_dir), home=tmp_path / "home")
        assert down.returncode == 0 and "had already exited; removed its record" in down.stdout
        assert stranger.poll() is None and not (data_dir / SERVER_RECORD).exists()
    finally:
        stranger.kill()
        stranger.wait()
