"""`sync push` and the audio Label Studio serves: a document root it does not share stops the push, and the fix continues."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sync.archive import Archive
from sync.ledger import Ledger
from sync.ls_client import LabelStudioClient
from sync.push import PushOptions, push
from tests.cli_process import HABLA_LS
from tests.push_helpers import project_id_by_title, project_tasks, served_audio

pytestmark = pytest.mark.labelstudio


def test_a_document_root_label_studio_does_not_share_stops_the_push_then_the_fix_continues(
    make_recordings, tmp_path
) -> None:
    """A real server whose document root moves away from habla-ls': the push stops naming both roots and
    changes nothing; set right, it rewrites the tasks it had made and goes on without duplicates."""
    from habla_ls.config import load_settings
    from sync.ls_server import LabelStudioServer, start_test_server, template_credentials
    from sync.served_audio import AudioNotServed

    outer = tmp_path / "served"
    home = outer / "home"
    home.mkdir(parents=True)
    rec = make_recordings(sessions=2, segments_per_session=3, live_session=False)
    first_session = rec.sessions[0]

    def settings(url: str, document_root: Path | None):
        return load_settings(
            environ={}, label_studio_url=url, label_studio_api_key=template_credentials().token, home=str(home),
            label_studio_document_root=str(document_root) if document_root else None, project_title="docroot test",
        )

    server = start_test_server(tmp_path / "ls", document_root=home)  # Label Studio's root: habla-ls' home
    try:
        first = settings(server.url, None)
        before = push(
            first.label_studio_project(), first.work_paths(),
            PushOptions(recordings=rec.root, sessions=(first_session,), progress=False),
        )
        assert before.new == 3
    finally:
        server.stop()
    # Label Studio restarted with its document root one level up; habla-ls still means its home.
    server = LabelStudioServer(server.data_dir, template_credentials(), document_root=outer).start()
    try:
        wrong = settings(server.url, None)
        with pytest.raises(AudioNotServed) as stopped:
            push(wrong.label_studio_project(), wrong.work_paths(), PushOptions(recordings=rec.root, batch_size=2, progress=False))
        message = str(stopped.value)
        assert "\n" not in message and "answered HTTP 404" in message
        assert f"habla-ls' document root is {home.resolve()}" in message
        assert f"Label Studio's is {outer.resolve()}" in message
        with LabelStudioClient(server.url, server.token) as client:
            project_id = before.project_id
            assert client.task_count(project_id) == 3  # nothing imported
            with Ledger(wrong.ledger_path) as ledger:
                assert len(ledger.task_map(project_id)) == 3 and ledger.pending_keys(project_id) == []

            env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "HABLA_"))}
            env.update(LABEL_STUDIO_URL=server.url, LABEL_STUDIO_API_KEY=server.token, HABLA_LS_HOME=str(home),
                       HABLA_LS_PROJECT="docroot test")
            cli_run = subprocess.run([HABLA_LS, "sync", "push", "--recordings", str(rec.root), "--no-progress"],
                                     env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
            assert cli_run.returncode == 1 and cli_run.stderr.count("\n") == 1
            assert cli_run.stderr.startswith("Error: Label Studio does not serve the archived audio")
            assert server.token not in cli_run.stderr

            right = settings(server.url, outer)
            fixed = push(
                right.label_studio_project(), right.work_paths(), PushOptions(recordings=rec.root, batch_size=2, progress=False)
            )
            assert (fixed.audio_urls_fixed, fixed.new, fixed.already) == (3, 3, 3)
            tasks = list(client.iter_tasks(project_id))
            assert sorted(t["data"]["ext_id"] for t in tasks) == sorted(rec.references)  # one task each
            archive = Archive(home / "archive")
            for task in tasks:
                assert served_audio(client, task) == archive.path_for(task["data"]["sha256"]).read_bytes()
            again = push(right.label_studio_project(), right.work_paths(), PushOptions(recordings=rec.root, progress=False))
            assert (again.new, again.audio_urls_fixed, again.already) == (0, 0, 6)
    finally:
        server.stop()


def test_a_first_push_into_a_root_label_studio_does_not_serve_imports_nothing(make_recordings, ls_settings, ls_client, ls_document_root) -> None:
    import dataclasses

    from sync.served_audio import AudioNotServed

    rec = make_recordings(sessions=1, segments_per_session=3, live_session=False)
    # The shared server serves ls_document_root; habla-ls told its own home is the root: URLs miss a level.
    wrong = dataclasses.replace(ls_settings, label_studio_document_root=None)
    with pytest.raises(AudioNotServed, match=f"Label Studio's is {ls_document_root.resolve()};"):
        push(wrong.label_studio_project(), wrong.work_paths(), PushOptions(recordings=rec.root, batch_size=2, progress=False))
    project_id = project_id_by_title(ls_client, ls_settings.project_title)
    assert project_tasks(ls_client, project_id) == []
    with Ledger(ls_settings.ledger_path) as ledger:
        assert (ledger.segments(), ledger.pending_keys(project_id), ledger.task_map(project_id)) == ([], [], {})
    right = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, batch_size=2, progress=False))
    assert (right.new, right.audio_urls_fixed) == (3, 0)
    assert all(served_audio(ls_client, task) for task in project_tasks(ls_client, project_id))


