"""The page's loudness-normalised copy of quiet clips; the archived original is never changed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ml_backend.audio import decode, encode_wav, rms_dbfs
from sync.listening import ensure_listening_copy, gain_text, listening_gain_db


def _speech(espeak_clip, gain_db: float) -> np.ndarray:
    return (espeak_clip("Abrid el libro por la página treinta y dos.") * np.float32(10 ** (gain_db / 20))).astype(np.float32)


def test_a_quiet_clip_gets_an_amplified_copy_and_the_original_stays(espeak_clip, tmp_path):
    loud = _speech(espeak_clip, 0.0)
    quiet = _speech(espeak_clip, -20.0)
    archived = tmp_path / "ab" / "abcd.wav"
    archived.parent.mkdir()
    archived.write_bytes(encode_wav(quiet))
    before = hashlib.sha256(archived.read_bytes()).hexdigest()

    played, gain = ensure_listening_copy(archived)

    assert played != archived and played.name == "abcd.listen.wav"
    assert hashlib.sha256(archived.read_bytes()).hexdigest() == before
    copy = decode(played)
    # Brought up to a speaking level, without clipping.
    assert gain >= 15
    assert abs(rms_dbfs(copy) - rms_dbfs(decode(archived)) - gain) < 0.5
    assert np.max(np.abs(copy)) < 0.95
    assert "louder" in gain_text(gain)
    # A clip already at a speaking level is played as recorded.
    assert listening_gain_db(loud) == 0.0 or listening_gain_db(loud) < listening_gain_db(quiet) - 15
    assert gain_text(0.0) == ""


def test_silence_is_not_amplified(tmp_path):
    archived = tmp_path / "00" / "silence.wav"
    archived.parent.mkdir()
    archived.write_bytes(encode_wav(np.zeros(16000, dtype=np.float32)))
    assert ensure_listening_copy(archived) == (archived, 0.0)


@pytest.mark.labelstudio
def test_the_page_plays_a_quiet_clips_louder_copy_and_training_reads_the_original(make_recordings, ls_settings):
    from sync.archive import Archive
    from sync.labelling_config import DATA_AUDIO, DATA_LOUDNESS, DATA_SHA256, transcription_result
    from sync.ls_client import LabelStudioClient
    from sync.manifest import read_manifest
    from sync.pull import pull
    from sync.push import PushOptions, push

    recordings = make_recordings(sessions=1, segments_per_session=2, speakers=("profesora", "alumna"),
                                 quiet_speakers=("alumna",), live_session=False)
    project, paths = ls_settings.label_studio_project(), ls_settings.work_paths()
    pushed = push(project, paths, PushOptions(recordings=recordings.root, progress=False))
    assert pushed.new == 2
    with LabelStudioClient.for_project(project) as client:
        tasks = {t["data"]["speaker"]: t for t in client.iter_tasks(pushed.project_id, all_fields=True)}
        quiet, loud = tasks["alumna"]["data"], tasks["profesora"]["data"]
        assert quiet[DATA_AUDIO].endswith(".listen.wav") and "louder" in quiet[DATA_LOUDNESS]
        assert loud[DATA_AUDIO].endswith(f"{loud[DATA_SHA256]}.wav") and loud[DATA_LOUDNESS] == ""
        # Label Studio serves the copy the page plays.
        served = client.fetch_file(quiet[DATA_AUDIO]).content
        assert served == Archive(paths.archive_dir).path_for(quiet[DATA_SHA256]).with_name(f"{quiet[DATA_SHA256]}.listen.wav").read_bytes()
        client.create_annotation(tasks["alumna"]["id"], transcription_result("hola"))
    pull(project, paths)
    rows = read_manifest(ls_settings.datasets_dir)
    assert [Path(r.audio_path).name for r in rows] == [f"{quiet[DATA_SHA256]}.wav"]
