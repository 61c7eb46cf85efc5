"""`sync push` when things break: a crash or kill mid-push, a lost answer, a refused or wrong token; every error one line without the token."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from sync.labelling_config import (
    LABEL_CONFIG,
    transcription_result,
)
from sync.ledger import Ledger
from sync.ls_client import LabelStudioClient
from sync.ls_errors import LabelStudioError
from sync.ls_server import free_port
from sync.push import PushOptions, push
from tests.cli_process import HABLA_LS
from tests.push_helpers import project_id_by_title, project_tasks

pytestmark = pytest.mark.labelstudio


CRASHING_PUSH = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from habla_ls.config import load_settings
    from sync.push import PushOptions, push

    def die_before_the_ledger_commit(imported):
        os._exit(137)  # like a kill -9: no cleanup, no finally blocks

    settings = load_settings()
    push(settings.label_studio_project(), settings.work_paths(),
         PushOptions(recordings=Path(sys.argv[1]), batch_size=5, progress=False),
         after_import=die_before_the_ledger_commit)
    """
)


def test_crash_between_import_and_ledger_commit_then_rerun(make_recordings, ls_settings, ls_cli_env, ls_client, tmp_path) -> None:
    rec = make_recordings(sessions=3, live_session=False)
    script = tmp_path / "crashing_push.py"
    script.write_text(CRASHING_PUSH)
    done = subprocess.run([sys.executable, str(script), str(rec.root)], env=ls_cli_env, cwd=tmp_path, capture_output=True, timeout=120)
    assert done.returncode == 137, done.stderr.decode()
    project_id = project_id_by_title(ls_client, ls_settings.project_title)
    assert len(project_tasks(ls_client, project_id)) == 5  # the first batch reached Label Studio ...
    with Ledger(ls_settings.ledger_path) as ledger:
        assert len(ledger.pending_keys(project_id)) == 5 and ledger.task_map(project_id) == {}  # ... but not the ledger

    summary = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, batch_size=5, progress=False))
    assert (summary.recovered, summary.new) == (5, 7)
    keys = Counter(t["data"]["ext_id"] for t in project_tasks(ls_client, project_id))
    assert set(keys) == set(rec.references) and set(keys.values()) == {1}
    with Ledger(ls_settings.ledger_path) as ledger:
        assert ledger.pending_keys(project_id) == [] and len(ledger.task_map(project_id)) == 12


def test_killed_cli_push_then_rerun_gives_one_task_per_segment(make_recordings, ls_settings, ls_cli_env, ls_client, tmp_path) -> None:
    rec = make_recordings(sessions=4, segments_per_session=6, live_session=False)
    command = [HABLA_LS, "sync", "push", "--recordings", str(rec.root), "--batch-size", "1", "--no-progress"]
    process = subprocess.Popen(command, env=ls_cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        project_id = project_id_by_title(ls_client, ls_settings.project_title)
        if project_id and ls_client.get_project(project_id)["task_number"] >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(30)
    assert process.returncode == -signal.SIGKILL  # it was killed mid-push, not finished
    rerun = subprocess.run(command, env=ls_cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    keys = Counter(t["data"]["ext_id"] for t in project_tasks(ls_client, project_id_by_title(ls_client, ls_settings.project_title)))
    assert set(keys) == set(rec.references) and set(keys.values()) == {1}
    assert "24 segments found" in rerun.stdout

def test_cli_errors_are_one_line_without_the_token(make_recordings, ls_cli_env, tmp_path, label_studio) -> None:
    rec = make_recordings(sessions=1, segments_per_session=1, live_session=False)
    bad_token = "f" * 40
    env = {**ls_cli_env, "LABEL_STUDIO_API_KEY": bad_token}
    result = subprocess.run([HABLA_LS, "sync", "push", "--recordings", str(rec.root)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "refused the token (HTTP 401)" in result.stderr and "Traceback" not in result.stderr
    assert bad_token not in result.stdout + result.stderr and label_studio.token not in result.stdout + result.stderr

    runner = CliRunner()
    env = {**ls_cli_env, "LABEL_STUDIO_URL": f"http://127.0.0.1:{free_port()}"}
    result = runner.invoke(cli, ["sync", "push", "--recordings", str(rec.root), "--no-progress"], env=env)
    assert result.exit_code == 1 and "is unreachable" in result.output and result.output.count("\n") == 1
    result = runner.invoke(cli, ["sync", "push", "--recordings", str(tmp_path / "nope")], env=ls_cli_env)
    assert result.exit_code == 1 and "recordings dir not found" in result.output
    result = runner.invoke(cli, ["sync", "pull"], env={**ls_cli_env, "LABEL_STUDIO_API_KEY": ""})
    assert result.exit_code == 1 and "no Label Studio token" in result.output

class AnswerLosingProxy:
    """A real HTTP hop in front of Label Studio that forwards every request and, for the ones ``lose``
    picks, drops the connection once Label Studio has answered: the request happened, the client never
    hears so (what a restarted proxy or a dropped network does). ``lost`` lists what it dropped."""

    def __init__(self, upstream: str, lose: Callable[[str, str], bool]):
        import http.server
        import threading

        import httpx

        proxy = self
        self.lost: list[tuple[str, str]] = []
        self.upstream = httpx.Client(base_url=upstream, timeout=120)

        class Handler(http.server.BaseHTTPRequestHandler):
            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                answer = proxy.upstream.request(self.command, self.path, content=body, headers=headers)
                if lose(self.command, self.path):
                    proxy.lost.append((self.command, self.path))
                    self.close_connection = True
                    return  # nothing written: the client sees the connection close without an answer
                self.send_response(answer.status_code)
                for key, value in answer.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PATCH = do_DELETE = forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> AnswerLosingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.upstream.close()


def test_an_import_whose_answer_is_lost_is_sent_once_and_the_next_push_recovers_it(make_recordings, ls_settings, label_studio, ls_client) -> None:
    import dataclasses

    from sync.ls_errors import LabelStudioUnreachable

    rec = make_recordings(sessions=1, segments_per_session=3, live_session=False)

    def is_import(method: str, path: str) -> bool:
        return method == "POST" and path.split("?")[0].endswith("/import")

    with AnswerLosingProxy(label_studio.url, is_import) as proxy:
        through_proxy = dataclasses.replace(ls_settings.label_studio_project(), url=proxy.url)
        with pytest.raises(LabelStudioUnreachable) as lost:
            push(through_proxy, ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert "\n" not in str(lost.value) and label_studio.token not in str(lost.value)
    # Sent once: the SDK's own policy would have sent it twice more after the dropped connection.
    assert len(proxy.lost) == 1
    project_id = project_id_by_title(ls_client, ls_settings.project_title)
    assert len(project_tasks(ls_client, project_id)) == 3
    with Ledger(ls_settings.ledger_path) as ledger:
        assert len(ledger.pending_keys(project_id)) == 3 and ledger.task_map(project_id) == {}

    again = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (again.recovered, again.new, again.already) == (3, 0, 3)
    keys = Counter(t["data"]["ext_id"] for t in project_tasks(ls_client, project_id))
    assert set(keys) == set(rec.references) and set(keys.values()) == {1}


def test_label_studio_errors_name_the_task_or_project_and_never_the_token(label_studio, ls_client) -> None:
    missing = 987654321
    failures = {
        f"annotating task {missing}": lambda: ls_client.create_annotation(missing, transcription_result("hola")),
        f"reading task {missing}": lambda: ls_client.get_task(missing),
        f"importing 1 tasks into project {missing}": lambda: ls_client.import_tasks(missing, [{"data": {"audio": "/a.wav"}}]),
        f"changing label_config of project {missing}": lambda: ls_client.update_project(missing, label_config=LABEL_CONFIG),
        f"listing the tasks of project {missing}": lambda: list(ls_client.iter_tasks(missing)),
    }
    for what, fail in failures.items():
        with pytest.raises(LabelStudioError) as caught:
            fail()
        message = str(caught.value)
        assert message.startswith(f"Label Studio at {label_studio.url}: {what} failed with HTTP 404"), message
        assert "\n" not in message and label_studio.token not in message

    wrong = "f" * 40
    with LabelStudioClient(label_studio.url, wrong) as refused:
        assert wrong not in repr(refused)
        with pytest.raises(LabelStudioError) as caught:
            refused.get_task(missing)
    message = str(caught.value)
    assert f"refused the token (HTTP 401) while reading task {missing}" in message
    assert "\n" not in message and wrong not in message


def test_a_personal_access_token_works_like_the_legacy_token(make_recordings, ls_settings, label_studio, ls_client) -> None:
    """Label Studio's personal access tokens are JWT refresh tokens: the SDK trades them for access tokens."""
    import dataclasses

    from sync.ls_errors import LabelStudioAuthError

    personal = ls_client.sdk.tokens.create().token
    assert personal.count(".") == 2 and personal != label_studio.token
    rec = make_recordings(sessions=1, segments_per_session=2, live_session=False)
    with_personal = dataclasses.replace(ls_settings.label_studio_project(), token=personal)
    summary = push(with_personal, ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert summary.new == 2 and len(project_tasks(ls_client, summary.project_id)) == 2

    tampered = personal[:-6] + ("A" * 6 if not personal.endswith("A" * 6) else "B" * 6)
    with pytest.raises(LabelStudioAuthError) as caught, LabelStudioClient(label_studio.url, tampered) as client:
        client.whoami()
    assert "refused the token (HTTP 401)" in str(caught.value) and tampered not in str(caught.value)
