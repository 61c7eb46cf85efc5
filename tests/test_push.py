"""`sync push` against a real Label Studio: bad input, idempotence, crashes, dry run, CLI errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from habla_ls.cli import cli
from ml_backend.audio import encode_wav
from sync.archive import Archive
from sync.labelling_config import (
    DATA_CONFIDENCE,
    DATA_PRIORITY,
    DATA_RECORDED_AT,
    DATA_TRANSLATION,
    EMPTY_CHECKS,
    LABEL_CONFIG,
    SAMPLING_SEQUENTIAL,
    flags_result,
    transcription_result,
)
from sync.ledger import Ledger
from sync.ls_client import LabelStudioClient
from sync.ls_errors import LabelStudioError
from sync.ls_server import free_port
from sync.push import PushOptions, push

pytestmark = pytest.mark.labelstudio

BAD_SESSION = "bad_20250310_100000"
HABLA_LS = str(Path(sys.executable).parent / "habla-ls")


@pytest.fixture
def ls(label_studio):
    """The test server through habla-ls' own client (label-studio-sdk), for asserting on its state."""
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        yield client


def _tasks(ls: LabelStudioClient, project_id: int) -> list[dict]:
    return list(ls.iter_tasks(project_id, all_fields=True, page_size=1000))


def _project_id(ls: LabelStudioClient, title: str) -> int | None:
    project = ls.find_project(title)
    return int(project["id"]) if project else None


def _add_bad_session(root: Path, speech: np.ndarray, outside: Path) -> None:
    """A session holding every kind of bad input next to three usable (one resampled, one stereo) clips."""
    session = root / BAD_SESSION
    session.mkdir()
    (session / "segment_001.wav").write_bytes(encode_wav(speech))
    sf.write(session / "segment_002.wav", np.repeat(speech, 2)[: len(speech) * 2], 32000)  # 32 kHz
    sf.write(session / "segment_003.wav", np.stack([speech, speech], axis=1), 16000)  # stereo
    (session / "segment_004.wav").write_bytes(encode_wav(np.zeros(0, dtype=np.float32)))  # empty
    (session / "segment_005.wav").write_bytes(encode_wav(np.zeros(16000 * 31, dtype=np.float32)))  # 31 s
    (session / "segment_006.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")  # unreadable
    outside.write_bytes(encode_wav(speech))
    os.symlink(outside, session / "segment_007.wav")  # escapes the recordings dir
    (session / "metadata.json").write_text('{"session_id": "bad", "segments": [')  # corrupt JSON
    (session / "ground_truth.json").write_text(
        json.dumps(
            {
                "segments": [
                    {"segment_id": 1, "filename": "segment_001.wav", "transcript": "Buenos días.", "confidence": -0.1},
                    {"segment_id": 8, "filename": "../../escape.wav", "transcript": "fuera"},
                    {"segment_id": 10, "filename": "segment_010.wav", "transcript": "no existe"},
                ]
            }
        )
    )


@pytest.fixture
def recordings(make_recordings, espeak_clip, tmp_path):
    rec = make_recordings(sessions=3, corrected=True)  # 12 segments; the last session is live
    _add_bad_session(rec.root, espeak_clip("Buenos días."), tmp_path / "outside.wav")
    return rec


def test_push_with_every_bad_case_then_repush_pushes_nothing(recordings, ls_settings, ls, tmp_path) -> None:
    summary = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=recordings.root, batch_size=5, progress=False))
    good_keys = set(recordings.references) | {f"{BAD_SESSION}/segment_00{i}.wav" for i in (1, 2, 3)}
    assert (summary.new, summary.already, summary.found) == (15, 0, 18)  # the outside symlink is no segment
    reasons = {Path(p.path).name: p.reason for p in summary.skipped}
    assert "corrupt JSON" in reasons["metadata.json"]
    assert "escapes the session dir" in reasons["ground_truth.json"]
    assert "WAV is missing" in reasons["segment_010.wav"]
    assert reasons["segment_004.wav"] == "empty audio (0 samples)"
    assert reasons["segment_005.wav"].startswith("audio too long (31.0 s")
    assert reasons["segment_006.wav"].startswith("unreadable audio")
    assert "outside the recordings dir" in reasons["segment_007.wav"]
    assert len(summary.skipped) == 7
    assert sorted(summary.converted) == sorted(
        [
            f"{recordings.root / BAD_SESSION / 'segment_002.wav'}: resampled from 32000 Hz",
            f"{recordings.root / BAD_SESSION / 'segment_003.wav'}: downmixed from 2 channels",
        ]
    )
    assert any(line.startswith("  skipped 1: empty audio") for line in summary.lines())

    tasks = _tasks(ls, summary.project_id)
    by_key = {t["data"]["ext_id"]: t for t in tasks}
    assert len(tasks) == 15 and set(by_key) == good_keys
    archive = Archive(ls_settings.archive_dir)
    first, _, live = recordings.sessions
    corrected = by_key[f"{first}/segment_001.wav"]
    assert set(corrected["data"]) == {
        "audio", "ext_id", "session", "segment", "speaker", "recorded_at", "translation", "confidence", "duration", "sha256",
        "loudness", "check_text", "check_words",
    }
    assert corrected["data"]["speaker"] == "profesora" and corrected["data"]["session"] == first
    # The page's context: the recorder's time of the segment; no translation from the sample writer yet,
    # no confidence before a round; a live session has only its start time.
    metadata = json.loads((recordings.root / first / "metadata.json").read_text())
    recorded = next(e["recorded_at"] for e in metadata["segments"] if e["filename"] == "segment_001.wav")
    assert corrected["data"]["recorded_at"] == recorded.replace("T", " ")[:19]  # whole seconds
    assert (corrected["data"]["translation"], corrected["data"]["confidence"]) == ("", "")
    assert by_key[f"{live}/segment_001.wav"]["data"]["recorded_at"] == "2025-03-05 09:00:00 (session start)"
    (prediction,) = corrected["predictions"]
    assert prediction["model_version"] == "habla-corrected" and prediction["score"] == 1.0
    assert prediction["result"][0]["value"]["text"] == [recordings.references[f"{first}/segment_001.wav"]]
    assert by_key[f"{first}/segment_004.wav"]["predictions"][0]["model_version"] == "habla-ground-truth"
    assert by_key[f"{first}/segment_004.wav"]["predictions"][0]["score"] is None  # Habla wrote 0: no information
    assert all(not by_key[f"{live}/segment_00{i}.wav"]["predictions"] for i in range(1, 5))
    bad_first = by_key[f"{BAD_SESSION}/segment_001.wav"]["predictions"][0]
    assert bad_first["model_version"] == "habla-ground-truth" and bad_first["score"] == pytest.approx(np.exp(-0.1), abs=1e-4)

    # the audio is in the archive under the original's sha256, 16 kHz mono, and Label Studio serves it
    resampled = by_key[f"{BAD_SESSION}/segment_002.wav"]["data"]
    info = sf.info(str(archive.path_for(resampled["sha256"])))
    assert (info.samplerate, info.channels) == (16000, 1) and resampled["duration"] == pytest.approx(info.duration, abs=0.01)
    assert _served(ls, corrected) == archive.path_for(corrected["data"]["sha256"]).read_bytes()

    again = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=recordings.root, progress=False))
    assert (again.new, again.already, again.recovered, len(again.skipped)) == (0, 15, 0, 7)
    assert len(_tasks(ls, summary.project_id)) == 15


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


def test_crash_between_import_and_ledger_commit_then_rerun(make_recordings, ls_settings, ls_cli_env, ls, tmp_path) -> None:
    rec = make_recordings(sessions=3, live_session=False)
    script = tmp_path / "crashing_push.py"
    script.write_text(CRASHING_PUSH)
    done = subprocess.run([sys.executable, str(script), str(rec.root)], env=ls_cli_env, cwd=tmp_path, capture_output=True, timeout=120)
    assert done.returncode == 137, done.stderr.decode()
    project_id = _project_id(ls, ls_settings.project_title)
    assert len(_tasks(ls, project_id)) == 5  # the first batch reached Label Studio ...
    with Ledger(ls_settings.ledger_path) as ledger:
        assert len(ledger.pending_keys(project_id)) == 5 and ledger.task_map(project_id) == {}  # ... but not the ledger

    summary = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, batch_size=5, progress=False))
    assert (summary.recovered, summary.new) == (5, 7)
    keys = Counter(t["data"]["ext_id"] for t in _tasks(ls, project_id))
    assert set(keys) == set(rec.references) and set(keys.values()) == {1}
    with Ledger(ls_settings.ledger_path) as ledger:
        assert ledger.pending_keys(project_id) == [] and len(ledger.task_map(project_id)) == 12


def test_killed_cli_push_then_rerun_gives_one_task_per_segment(make_recordings, ls_settings, ls_cli_env, ls, tmp_path) -> None:
    rec = make_recordings(sessions=4, segments_per_session=6, live_session=False)
    command = [HABLA_LS, "sync", "push", "--recordings", str(rec.root), "--batch-size", "1", "--no-progress"]
    process = subprocess.Popen(command, env=ls_cli_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        project_id = _project_id(ls, ls_settings.project_title)
        if project_id and ls.get_project(project_id)["task_number"] >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(30)
    assert process.returncode == -signal.SIGKILL  # it was killed mid-push, not finished
    rerun = subprocess.run(command, env=ls_cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    keys = Counter(t["data"]["ext_id"] for t in _tasks(ls, _project_id(ls, ls_settings.project_title)))
    assert set(keys) == set(rec.references) and set(keys.values()) == {1}
    assert "24 segments found" in rerun.stdout


def test_dry_run_changes_nothing_then_session_and_limit(make_recordings, ls_settings, ls) -> None:
    rec = make_recordings(sessions=2, live_session=True)
    dry = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, dry_run=True, progress=False))
    assert (dry.new, dry.project_id) == (12, None)
    assert _project_id(ls, ls_settings.project_title) is None
    assert not ls_settings.archive_dir.exists()

    first = rec.sessions[0]
    some = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, sessions=(first,), limit=2, progress=False))
    assert (some.found, some.new, some.not_pushed_limit) == (6, 2, 4)
    assert sorted(t["data"]["ext_id"] for t in _tasks(ls, some.project_id)) == [f"{first}/segment_00{i}.wav" for i in (1, 2)]
    dry = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, dry_run=True, progress=False))
    assert (dry.new, dry.already, dry.project_id) == (10, 2, some.project_id)
    rest = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (rest.new, rest.already) == (10, 2)


def test_live_session_gets_a_prefill_once_habla_writes_transcripts(make_recordings, ls_settings, ls) -> None:
    rec = make_recordings(sessions=1, segments_per_session=3, live_session=True)
    first = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert all(not t["predictions"] for t in _tasks(ls, first.project_id))
    session = rec.root / rec.sessions[0]
    assert {t["data"][DATA_RECORDED_AT] for t in _tasks(ls, first.project_id)} == {"2025-03-03 09:00:00 (session start)"}
    segments = [
        {"filename": s.path.name, "transcript": s.spoken, "confidence": -0.5, "speaker": s.speaker,
         "translation": f"English {i}", "recorded_at": f"2025-03-03T09:00:0{i}"}
        for i, s in enumerate(rec.segments, 1)
    ]
    (session / "metadata.json").write_text(json.dumps({"segments": segments}))  # Habla stopped the session
    second = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (second.new, second.refreshed, second.context_refreshed) == (0, 3, 3)
    tasks = _tasks(ls, first.project_id)
    assert [t["predictions"][0]["model_version"] for t in tasks] == ["habla-live"] * 3
    assert [(t["data"][DATA_TRANSLATION], t["data"][DATA_RECORDED_AT]) for t in tasks] == [
        (f"English {i}", f"2025-03-03 09:00:0{i}") for i in (1, 2, 3)
    ]
    again = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (again.refreshed, again.context_refreshed) == (0, 0)


# The page of the release before issue 9: the same control names, none of the context.
OLD_LABEL_CONFIG = """<View>
  <Header value="$ext_id" size="6"/>
  <Audio name="audio" value="$audio" hotkey="space"/>
  <TextArea name="transcription" toName="audio" rows="3" editable="true" maxSubmissions="1" transcription="true"/>
  <Choices name="flags" toName="audio" choice="multiple" showInline="true">
    <Choice value="noise"/><Choice value="unintelligible"/><Choice value="wrong language"/>
  </Choices>
</View>"""


def test_a_project_from_an_older_release_gets_the_new_page_and_context(make_recordings, ls_settings, ls) -> None:
    rec = make_recordings(sessions=2, segments_per_session=2, live_session=False)
    first = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    project_id = first.project_id
    project = ls.get_project(project_id)
    assert project["label_config"].strip() == LABEL_CONFIG.strip() and project["sampling"] == SAMPLING_SEQUENTIAL
    assert push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False)).page_updated is False

    # Make it what an older release left: its page, tasks without the context keys, annotations (of
    # both kinds) and a round's priority, which the upgrade must keep.
    ls.update_project(project_id, label_config=OLD_LABEL_CONFIG)
    tasks = _tasks(ls, project_id)
    for n, task in enumerate(tasks, 1):
        old = {k: v for k, v in task["data"].items() if k not in (DATA_RECORDED_AT, DATA_TRANSLATION, DATA_CONFIDENCE, *EMPTY_CHECKS)}
        ls.patch_task_data(task["id"], {**old, DATA_PRIORITY: n})
    ls.create_annotation(tasks[0]["id"], transcription_result("hola"))
    ls.create_annotation(tasks[1]["id"], flags_result("noise"))

    upgraded = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (upgraded.page_updated, upgraded.page_error, upgraded.context_refreshed) == (True, "", 4)
    assert "updated the project's labelling page to this release's" in upgraded.lines()
    assert ls.get_project(project_id)["label_config"].strip() == LABEL_CONFIG.strip()
    after = _tasks(ls, project_id)
    assert [t["data"][DATA_PRIORITY] for t in after] == [1, 2, 3, 4]
    assert all(t["data"][DATA_RECORDED_AT].startswith("2025-03-0") and DATA_TRANSLATION in t["data"] for t in after)
    # The new page's word checks need their keys in every task, or Label Studio shows an error instead.
    assert all(all(k in t["data"] for k in EMPTY_CHECKS) for t in after)
    assert [len(t["annotations"]) for t in after] == [1, 1, 0, 0]
    again = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (again.page_updated, again.context_refreshed) == (False, 0)


def test_a_page_label_studio_refuses_leaves_the_push_going(make_recordings, ls_settings, ls) -> None:
    rec = make_recordings(sessions=1, segments_per_session=2, live_session=False)
    first = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    # Someone added a "topic" choice by hand in Label Studio and used it: the new page lacks it, and
    # Label Studio refuses a page that would orphan annotations.
    topic = '<Choices name="topic" toName="audio"><Choice value="maths"/></Choices>'
    edited = LABEL_CONFIG.replace("</View>\n</View>", f"</View>\n  {topic}\n</View>")
    ls.update_project(first.project_id, label_config=edited)
    task = _tasks(ls, first.project_id)[0]
    ls.create_annotation(
        task["id"], [{"from_name": "topic", "to_name": "audio", "type": "choices", "value": {"choices": ["maths"]}}]
    )
    rec2 = make_recordings(rec.root, sessions=2, segments_per_session=2, live_session=False)

    summary = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec2.root, progress=False))

    assert summary.page_updated is False and "HTTP 400" in summary.page_error
    assert any(line.startswith("kept the project's old labelling page: ") for line in summary.lines())
    assert summary.new == 2 and len(_tasks(ls, first.project_id)) == 4
    assert 'name="topic"' in ls.get_project(first.project_id)["label_config"]


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


def _add_processed_dir(root: Path, speech: np.ndarray, count: int = 3) -> Path:
    """What Habla's orchestrator leaves with recording on: a debug copy of every ASR input."""
    processed = root / "processed"
    processed.mkdir()
    for n in range(count):
        (processed / f"asr_input_1741000000{n}_{n:04d}.wav").write_bytes(encode_wav(speech))
    return processed


def test_dirs_that_are_not_sessions_are_never_pushed_and_summed_up_in_one_line(
    make_recordings, espeak_clip, ls_settings, ls_cli_env, ls
) -> None:
    rec = make_recordings(sessions=2, segments_per_session=2, live_session=False)
    speech = espeak_clip("Buenos días.")
    _add_processed_dir(rec.root, speech)
    (rec.root / "copia").mkdir()  # a hand-made copy: segment WAVs, but no session name
    (rec.root / "copia" / "segment_001.wav").write_bytes(encode_wav(speech))
    expected = (
        "skipped 2 dirs that are not Habla sessions: copia/ (1 WAV: not named <session>_<YYYYmmdd>_<HHMMSS>), "
        "processed/ (3 WAVs: Habla's debug copies of its ASR input)"
    )

    dry = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, dry_run=True, progress=False))
    assert (dry.found, dry.new) == (4, 4) and expected in dry.lines()

    result = CliRunner().invoke(cli, ["sync", "push", "--recordings", str(rec.root), "--no-progress"], env=ls_cli_env)
    assert result.exit_code == 0, result.output
    assert [line for line in result.output.splitlines() if "processed" in line or "copia" in line] == [expected]
    assert "4 segments found; pushed 4 new, 0 already there, 0 skipped" in result.output
    tasks = _tasks(ls, _project_id(ls, ls_settings.project_title))
    assert sorted(t["data"]["ext_id"] for t in tasks) == sorted(rec.references)
    with Ledger(ls_settings.ledger_path) as ledger:
        assert {s.session for s in ledger.segments()} == set(rec.sessions)  # nothing of them archived either

    alone = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, sessions=("processed",), progress=False))
    assert (alone.found, alone.new, alone.skipped) == (0, 0, [])
    assert "skipped 1 dir that is not a Habla session: processed/ (3 WAVs: Habla's debug copies of its ASR input)" in alone.lines()


def _served(ls: LabelStudioClient, task: dict) -> bytes | None:
    """The task's audio as Label Studio serves it to the labelling page, or None."""
    try:
        return ls.fetch_file(task["data"]["audio"]).content
    except LabelStudioError:
        return None


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
            assert cli_run.stderr.startswith("error: Label Studio does not serve the archived audio")
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
                assert _served(client, task) == archive.path_for(task["data"]["sha256"]).read_bytes()
            again = push(right.label_studio_project(), right.work_paths(), PushOptions(recordings=rec.root, progress=False))
            assert (again.new, again.audio_urls_fixed, again.already) == (0, 0, 6)
    finally:
        server.stop()


CRASH_AFTER_LABEL_STUDIO_UPDATE = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from habla_ls.config import load_settings
    from sync import ledger
    from sync.push import PushOptions, push

    record = ledger.Ledger.add_segments

    def die_before_the_ledger_learns_the_new_audio(self, records, *, replaced_at=None):
        if replaced_at is not None:
            os._exit(137)  # like a kill -9 between the task update and the ledger write
        return record(self, records, replaced_at=replaced_at)

    ledger.Ledger.add_segments = die_before_the_ledger_learns_the_new_audio
    settings = load_settings()
    push(settings.label_studio_project(), settings.work_paths(), PushOptions(recordings=Path(sys.argv[1]), progress=False))
    """
)


def test_a_wav_rewritten_under_the_same_name_updates_its_task_and_keeps_the_old_audio(
    make_recordings, espeak_clip, ls_settings, ls_cli_env, ls, tmp_path
) -> None:
    import hashlib

    rec = make_recordings(sessions=2, segments_per_session=2, live_session=False)
    first = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    project_id = first.project_id
    key = f"{rec.sessions[0]}/segment_001.wav"
    task = next(t for t in _tasks(ls, project_id) if t["data"]["ext_id"] == key)
    old_sha = task["data"]["sha256"]
    annotation = ls.create_annotation(task["id"], transcription_result("la frase de antes"))
    ls.create_predictions(project_id, [{"task": task["id"], "result": transcription_result("modelo"),
                                        "score": 0.2, "model_version": "base-v1"}])
    # Habla writes the segment again: other speech, and its ground truth says so.
    session = rec.root / rec.sessions[0]
    new_audio = encode_wav(espeak_clip("Hoy no hay clase de música."))
    (session / "segment_001.wav").write_bytes(new_audio)
    truth = json.loads((session / "ground_truth.json").read_text())
    truth["segments"][0]["transcript"] = "Hoy no hay clase de música."
    (session / "ground_truth.json").write_text(json.dumps(truth))
    os.utime(session / "segment_002.wav")  # touched, same bytes: not a change
    dry = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, dry_run=True, progress=False))
    assert dry.audio_updated == 1 and any(line.startswith("would update the audio of 1 tasks") for line in dry.lines())

    script = tmp_path / "crashing_push.py"
    script.write_text(CRASH_AFTER_LABEL_STUDIO_UPDATE)
    done = subprocess.run([sys.executable, str(script), str(rec.root)], env=ls_cli_env, cwd=tmp_path, capture_output=True, timeout=120)
    assert done.returncode == 137, done.stderr.decode()
    with Ledger(ls_settings.ledger_path) as ledger:
        assert ledger.segment(key).sha256 == old_sha  # Label Studio was updated, the ledger not yet

    second = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (second.audio_updated, second.new, second.already, second.skipped) == (1, 0, 4, [])
    tasks = _tasks(ls, project_id)
    assert len(tasks) == 4
    (updated,) = [t for t in tasks if t["data"]["ext_id"] == key]
    new_sha = hashlib.sha256(new_audio).hexdigest()
    assert updated["id"] == task["id"] and updated["data"]["sha256"] == new_sha
    assert updated["data"]["duration"] == pytest.approx((len(new_audio) - 44) / 2 / 16000, abs=0.002)
    assert _served(ls, updated) == new_audio
    # Habla's new transcript is the one prediction (the old audio's ones are gone); the annotation stays.
    assert [(p["model_version"], p["result"][0]["value"]["text"]) for p in updated["predictions"]] == [
        ("habla-ground-truth", ["Hoy no hay clase de música."])
    ]
    assert [a["id"] for a in updated["annotations"]] == [annotation["id"]]
    archive = Archive(ls_settings.archive_dir)
    assert archive.contains(old_sha) and archive.contains(new_sha)
    with Ledger(ls_settings.ledger_path) as ledger:
        assert ledger.segment(key).sha256 == new_sha
        assert [v.sha256 for v in ledger.audio_history(key)] == [old_sha]
        assert ledger.audio_at(key, annotation["updated_at"])[0] == old_sha  # what the annotator heard
        assert ledger.audio_at(key, None)[0] == new_sha

    third = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (third.audio_updated, third.new, third.refreshed, third.context_refreshed) == (0, 0, 0, 0)
    assert len(_tasks(ls, project_id)) == 4


def test_a_first_push_into_a_root_label_studio_does_not_serve_imports_nothing(make_recordings, ls_settings, ls, ls_document_root) -> None:
    import dataclasses

    from sync.served_audio import AudioNotServed

    rec = make_recordings(sessions=1, segments_per_session=3, live_session=False)
    # The shared server serves ls_document_root; habla-ls told its own home is the root: URLs miss a level.
    wrong = dataclasses.replace(ls_settings, label_studio_document_root=None)
    with pytest.raises(AudioNotServed, match=f"Label Studio's is {ls_document_root.resolve()};"):
        push(wrong.label_studio_project(), wrong.work_paths(), PushOptions(recordings=rec.root, batch_size=2, progress=False))
    project_id = _project_id(ls, ls_settings.project_title)
    assert _tasks(ls, project_id) == []
    with Ledger(ls_settings.ledger_path) as ledger:
        assert (ledger.segments(), ledger.pending_keys(project_id), ledger.task_map(project_id)) == ([], [], {})
    right = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, batch_size=2, progress=False))
    assert (right.new, right.audio_urls_fixed) == (3, 0)
    assert all(_served(ls, task) for task in _tasks(ls, project_id))


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


def test_an_import_whose_answer_is_lost_is_sent_once_and_the_next_push_recovers_it(make_recordings, ls_settings, label_studio, ls) -> None:
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
    project_id = _project_id(ls, ls_settings.project_title)
    assert len(_tasks(ls, project_id)) == 3
    with Ledger(ls_settings.ledger_path) as ledger:
        assert len(ledger.pending_keys(project_id)) == 3 and ledger.task_map(project_id) == {}

    again = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (again.recovered, again.new, again.already) == (3, 0, 3)
    keys = Counter(t["data"]["ext_id"] for t in _tasks(ls, project_id))
    assert set(keys) == set(rec.references) and set(keys.values()) == {1}


def test_label_studio_errors_name_the_task_or_project_and_never_the_token(label_studio, ls) -> None:
    missing = 987654321
    failures = {
        f"annotating task {missing}": lambda: ls.create_annotation(missing, transcription_result("hola")),
        f"reading task {missing}": lambda: ls.get_task(missing),
        f"importing 1 tasks into project {missing}": lambda: ls.import_tasks(missing, [{"data": {"audio": "/a.wav"}}]),
        f"changing label_config of project {missing}": lambda: ls.update_project(missing, label_config=LABEL_CONFIG),
        f"listing the tasks of project {missing}": lambda: list(ls.iter_tasks(missing)),
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


def test_a_personal_access_token_works_like_the_legacy_token(make_recordings, ls_settings, label_studio, ls) -> None:
    """Label Studio's personal access tokens are JWT refresh tokens: the SDK trades them for access tokens."""
    import dataclasses

    from sync.ls_errors import LabelStudioAuthError

    personal = ls.sdk.tokens.create().token
    assert personal.count(".") == 2 and personal != label_studio.token
    rec = make_recordings(sessions=1, segments_per_session=2, live_session=False)
    with_personal = dataclasses.replace(ls_settings.label_studio_project(), token=personal)
    summary = push(with_personal, ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert summary.new == 2 and len(_tasks(ls, summary.project_id)) == 2

    tampered = personal[:-6] + ("A" * 6 if not personal.endswith("A" * 6) else "B" * 6)
    with pytest.raises(LabelStudioAuthError) as caught, LabelStudioClient(label_studio.url, tampered) as client:
        client.whoami()
    assert "refused the token (HTTP 401)" in str(caught.value) and tampered not in str(caught.value)
