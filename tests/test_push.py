"""`sync push` against a real Label Studio: bad input, idempotence, dry run, live sessions, page upgrades, rewritten audio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from habla_ls.cli import cli
from ml_backend.audio import encode_wav
from sync.archive import Archive
from sync.labelling_config import (
    DATA_CHECK_TEXT,
    DATA_CHECK_WORDS,
    DATA_CONFIDENCE,
    DATA_PRIORITY,
    DATA_RECORDED_AT,
    DATA_TRANSLATION,
    EMPTY_CHECKS,
    LABEL_CONFIG,
    NO_CHECK_ROWS,
    SAMPLING_SEQUENTIAL,
    flags_result,
    transcription_result,
)
from sync.ledger import Ledger
from sync.push import PushOptions, push
from tests.push_helpers import project_id_by_title, project_tasks, served_audio

pytestmark = pytest.mark.labelstudio
BAD_SESSION = "bad_20250310_100000"


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


def test_push_with_every_bad_case_then_repush_pushes_nothing(recordings, ls_settings, ls_client, tmp_path) -> None:
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

    tasks = project_tasks(ls_client, summary.project_id)
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
    assert served_audio(ls_client, corrected) == archive.path_for(corrected["data"]["sha256"]).read_bytes()

    again = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=recordings.root, progress=False))
    assert (again.new, again.already, again.recovered, len(again.skipped)) == (0, 15, 0, 7)
    assert len(project_tasks(ls_client, summary.project_id)) == 15

def test_dry_run_changes_nothing_then_session_and_limit(make_recordings, ls_settings, ls_client) -> None:
    rec = make_recordings(sessions=2, live_session=True)
    dry = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, dry_run=True, progress=False))
    assert (dry.new, dry.project_id) == (12, None)
    assert project_id_by_title(ls_client, ls_settings.project_title) is None
    assert not ls_settings.archive_dir.exists()

    first = rec.sessions[0]
    some = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, sessions=(first,), limit=2, progress=False))
    assert (some.found, some.new, some.not_pushed_limit) == (6, 2, 4)
    assert sorted(t["data"]["ext_id"] for t in project_tasks(ls_client, some.project_id)) == [f"{first}/segment_00{i}.wav" for i in (1, 2)]
    dry = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, dry_run=True, progress=False))
    assert (dry.new, dry.already, dry.project_id) == (10, 2, some.project_id)
    rest = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (rest.new, rest.already) == (10, 2)


def test_live_session_gets_a_prefill_once_habla_writes_transcripts(make_recordings, ls_settings, ls_client) -> None:
    rec = make_recordings(sessions=1, segments_per_session=3, live_session=True)
    first = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert all(not t["predictions"] for t in project_tasks(ls_client, first.project_id))
    session = rec.root / rec.sessions[0]
    assert {t["data"][DATA_RECORDED_AT] for t in project_tasks(ls_client, first.project_id)} == {"2025-03-03 09:00:00 (session start)"}
    segments = [
        {"filename": s.path.name, "transcript": s.spoken, "confidence": -0.5, "speaker": s.speaker,
         "translation": f"English {i}", "recorded_at": f"2025-03-03T09:00:0{i}"}
        for i, s in enumerate(rec.segments, 1)
    ]
    (session / "metadata.json").write_text(json.dumps({"segments": segments}))  # Habla stopped the session
    second = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (second.new, second.refreshed, second.context_refreshed) == (0, 3, 3)
    tasks = project_tasks(ls_client, first.project_id)
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


def test_a_project_from_an_older_release_gets_the_new_page_and_context(make_recordings, ls_settings, ls_client) -> None:
    rec = make_recordings(sessions=2, segments_per_session=2, live_session=False)
    first = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    project_id = first.project_id
    project = ls_client.get_project(project_id)
    assert project["label_config"].strip() == LABEL_CONFIG.strip() and project["sampling"] == SAMPLING_SEQUENTIAL
    assert push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False)).page_updated is False

    # Make it what an older release left: its page, tasks without the context keys, annotations (of
    # both kinds) and a round's priority, which the upgrade must keep.
    ls_client.update_project(project_id, label_config=OLD_LABEL_CONFIG)
    tasks = project_tasks(ls_client, project_id)
    for n, task in enumerate(tasks, 1):
        old = {k: v for k, v in task["data"].items() if k not in (DATA_RECORDED_AT, DATA_TRANSLATION, DATA_CONFIDENCE, *EMPTY_CHECKS)}
        blank = {DATA_CHECK_TEXT: "", DATA_CHECK_WORDS: []} if n == 3 else {}  # the rows of a release whose page went blank
        ls_client.patch_task_data(task["id"], {**old, **blank, DATA_PRIORITY: n})
    ls_client.create_annotation(tasks[0]["id"], transcription_result("hola"))
    ls_client.create_annotation(tasks[1]["id"], flags_result("noise"))

    upgraded = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (upgraded.page_updated, upgraded.page_error, upgraded.context_refreshed) == (True, "", 4)
    assert "updated the project's labelling page to this release's" in upgraded.lines()
    assert ls_client.get_project(project_id)["label_config"].strip() == LABEL_CONFIG.strip()
    after = project_tasks(ls_client, project_id)
    assert [t["data"][DATA_PRIORITY] for t in after] == [1, 2, 3, 4]
    assert all(t["data"][DATA_RECORDED_AT].startswith("2025-03-0") and DATA_TRANSLATION in t["data"] for t in after)
    # The new page's word checks need their keys in every task, or Label Studio shows an error instead.
    assert all(all(k in t["data"] for k in EMPTY_CHECKS) for t in after)
    assert all(t["data"][DATA_CHECK_WORDS] == list(NO_CHECK_ROWS) for t in after)  # never an empty list
    assert [len(t["annotations"]) for t in after] == [1, 1, 0, 0]
    again = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    assert (again.page_updated, again.context_refreshed) == (False, 0)


def test_a_page_label_studio_refuses_leaves_the_push_going(make_recordings, ls_settings, ls_client) -> None:
    rec = make_recordings(sessions=1, segments_per_session=2, live_session=False)
    first = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    # Someone added a "topic" choice by hand in Label Studio and used it: the new page lacks it, and
    # Label Studio refuses a page that would orphan annotations.
    topic = '<Choices name="topic" toName="audio"><Choice value="maths"/></Choices>'
    edited = LABEL_CONFIG.replace("</View>\n</View>", f"</View>\n  {topic}\n</View>")
    ls_client.update_project(first.project_id, label_config=edited)
    task = project_tasks(ls_client, first.project_id)[0]
    ls_client.create_annotation(
        task["id"], [{"from_name": "topic", "to_name": "audio", "type": "choices", "value": {"choices": ["maths"]}}]
    )
    rec2 = make_recordings(rec.root, sessions=2, segments_per_session=2, live_session=False)

    summary = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec2.root, progress=False))

    assert summary.page_updated is False and "HTTP 400" in summary.page_error
    assert any(line.startswith("kept the project's old labelling page: ") for line in summary.lines())
    assert summary.new == 2 and len(project_tasks(ls_client, first.project_id)) == 4
    assert 'name="topic"' in ls_client.get_project(first.project_id)["label_config"]

def _add_processed_dir(root: Path, speech: np.ndarray, count: int = 3) -> Path:
    """What Habla's orchestrator leaves with recording on: a debug copy of every ASR input."""
    processed = root / "processed"
    processed.mkdir()
    for n in range(count):
        (processed / f"asr_input_1741000000{n}_{n:04d}.wav").write_bytes(encode_wav(speech))
    return processed


def test_dirs_that_are_not_sessions_are_never_pushed_and_summed_up_in_one_line(
    make_recordings, espeak_clip, ls_settings, ls_cli_env, ls_client
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
    tasks = project_tasks(ls_client, project_id_by_title(ls_client, ls_settings.project_title))
    assert sorted(t["data"]["ext_id"] for t in tasks) == sorted(rec.references)
    with Ledger(ls_settings.ledger_path) as ledger:
        assert {s.session for s in ledger.segments()} == set(rec.sessions)  # nothing of them archived either

    alone = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, sessions=("processed",), progress=False))
    assert (alone.found, alone.new, alone.skipped) == (0, 0, [])
    assert "skipped 1 dir that is not a Habla session: processed/ (3 WAVs: Habla's debug copies of its ASR input)" in alone.lines()


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
    make_recordings, espeak_clip, ls_settings, ls_cli_env, ls_client, tmp_path
) -> None:
    import hashlib

    rec = make_recordings(sessions=2, segments_per_session=2, live_session=False)
    first = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    project_id = first.project_id
    key = f"{rec.sessions[0]}/segment_001.wav"
    task = next(t for t in project_tasks(ls_client, project_id) if t["data"]["ext_id"] == key)
    old_sha = task["data"]["sha256"]
    annotation = ls_client.create_annotation(task["id"], transcription_result("la frase de antes"))
    ls_client.create_predictions(project_id, [{"task": task["id"], "result": transcription_result("modelo"),
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
    tasks = project_tasks(ls_client, project_id)
    assert len(tasks) == 4
    (updated,) = [t for t in tasks if t["data"]["ext_id"] == key]
    new_sha = hashlib.sha256(new_audio).hexdigest()
    assert updated["id"] == task["id"] and updated["data"]["sha256"] == new_sha
    assert updated["data"]["duration"] == pytest.approx((len(new_audio) - 44) / 2 / 16000, abs=0.002)
    assert served_audio(ls_client, updated) == new_audio
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
    assert len(project_tasks(ls_client, project_id)) == 4


