"""`sync pull` against a real Label Studio: annotation choice, incremental pulls, --write-habla."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from sync.archive import Archive
from sync.habla import SOURCE_CORRECTED, scan_recordings
from sync.labelling_config import NOISE, UNINTELLIGIBLE, flags_result, transcription_result
from sync.ledger import Ledger
from sync.ls_client import LabelStudioClient
from sync.manifest import read_manifest
from sync.pull import pull
from sync.push import PushOptions, push

pytestmark = pytest.mark.labelstudio


def _files(directory: Path) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_pull_chooses_one_transcript_per_task_incrementally_and_writes_habla(make_recordings, ls_settings, ls_cli_env) -> None:
    rec = make_recordings(sessions=2, segments_per_session=4, live_session=False)
    summary = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False))
    client = LabelStudioClient.for_project(ls_settings.label_studio_project())
    project_id = summary.project_id
    with client:
        ids = dict(sorted(client.all_ext_ids(project_id).items()))
        keys = list(ids)
        task = {key: ids[key][0] for key in keys}
        plain, updated, cancelled_then_ok, skipped, empty, noise, unintelligible, untouched = keys
        client.create_annotation(task[plain], transcription_result(rec.references[plain]))
        first = client.create_annotation(task[updated], transcription_result("abrid el libro"))
        client.update_annotation(first["id"], transcription_result("Abrid el libro por la página 32."))
        client.create_annotation(task[cancelled_then_ok], transcription_result("ignorado"), was_cancelled=True)
        client.create_annotation(task[cancelled_then_ok], transcription_result("Hoy hablamos de verbos."))
        client.create_annotation(task[skipped], [], was_cancelled=True)
        client.create_annotation(task[empty], transcription_result("   "))
        client.create_annotation(task[noise], transcription_result("algo") + flags_result(NOISE))
        client.create_annotation(task[unintelligible], flags_result(UNINTELLIGIBLE))

    result = pull(ls_settings.label_studio_project(), ls_settings.work_paths())
    assert (result.annotated_tasks, result.usable, result.new, result.updated) == (7, 3, 3, 0)
    assert result.left_out == {"skipped or cancelled": 1, "empty transcript": 1, "marked noise": 1, "marked unintelligible": 1}
    rows = {r.segment_key: r for r in read_manifest(ls_settings.datasets_dir / "manifest.jsonl")}
    assert {k: r.transcript for k, r in rows.items()} == {
        plain: rec.references[plain],
        updated: "Abrid el libro por la página 32.",
        cancelled_then_ok: "Hoy hablamos de verbos.",
    }
    assert read_manifest(ls_settings.datasets_dir / "manifest.csv") == sorted(rows.values(), key=lambda r: r.segment_key)
    archive = Archive(ls_settings.archive_dir)
    row = rows[plain]
    assert Path(row.audio_path) == archive.path_for(row.sha256).resolve() and Path(row.audio_path).is_file()
    assert (row.speaker, row.session, row.task_id) == ("profesora", plain.split("/")[0], task[plain])
    assert row.duration == pytest.approx(next(s.duration for s in rec.segments if s.key == plain), abs=0.01)

    # nothing new: same bytes, files not even rewritten
    before = _files(ls_settings.datasets_dir)
    again = pull(ls_settings.label_studio_project(), ls_settings.work_paths())
    assert (again.new, again.updated, again.unchanged, again.manifest_changed) == (0, 0, 3, False)
    assert _files(ls_settings.datasets_dir) == before

    # an annotation updated since the last pull replaces the old text
    with LabelStudioClient.for_project(ls_settings.label_studio_project()) as client:
        client.update_annotation(first["id"], transcription_result("Abrid el libro por la página treinta y dos."))
    third = pull(ls_settings.label_studio_project(), ls_settings.work_paths())
    assert (third.new, third.updated, third.manifest_changed) == (0, 1, True)
    assert {r.segment_key: r.transcript for r in read_manifest(ls_settings.datasets_dir)}[updated].endswith("treinta y dos.")

    # --write-habla through the CLI: corrected_ground_truth.json in Habla's format, other files untouched
    sessions = {key.split("/")[0] for key in rows}
    habla_before = {name: _files(rec.root / name) for name in sessions}
    cli_result = CliRunner().invoke(cli, ["sync", "pull", "--write-habla"], env=ls_cli_env)
    assert cli_result.exit_code == 0, cli_result.output
    assert "manifest" in cli_result.output and "unchanged" in cli_result.output
    for name in sessions:
        after = _files(rec.root / name)
        assert {k: v for k, v in after.items() if k != "corrected_ground_truth.json"} == {
            k: v for k, v in habla_before[name].items() if k != "corrected_ground_truth.json"
        }
    scan = {s.key: s for s in scan_recordings(rec.root).segments}
    for key, row in rows.items():
        expected = "Abrid el libro por la página treinta y dos." if key == updated else row.transcript
        assert (scan[key].transcript_source, scan[key].transcript) == (SOURCE_CORRECTED, expected)
    assert scan[untouched].transcript_source != SOURCE_CORRECTED
    document = json.loads((rec.root / plain.split("/")[0] / "corrected_ground_truth.json").read_text())
    entry = next(e for e in document["segments"] if e["filename"] == plain.split("/")[1])
    assert entry["reviewed"] is True and entry["human_corrected"] is False  # the prefill was already right
    written = {name: _files(rec.root / name) for name in sessions}
    assert CliRunner().invoke(cli, ["sync", "pull", "--write-habla"], env=ls_cli_env).exit_code == 0
    assert {name: _files(rec.root / name) for name in sessions} == written  # idempotent

    # --full re-reads every annotated task and finds nothing new either
    manifests = _files(ls_settings.datasets_dir)
    full = CliRunner().invoke(cli, ["sync", "pull", "--full"], env=ls_cli_env)
    assert full.exit_code == 0, full.output
    assert "read Label Studio (full)" in full.output and "7 exported" in full.output  # every annotated task
    assert _files(ls_settings.datasets_dir) == manifests


def test_pull_without_project_is_a_clear_error(ls_settings) -> None:
    with pytest.raises(Exception, match="has no project titled .* run `habla-ls sync push` first"):
        pull(ls_settings.label_studio_project(), ls_settings.work_paths())


def _quick_synth(text: str, speaker: str) -> np.ndarray:
    """A distinct short clip per sentence (no speech needed: only the data path is tested here)."""
    rng = np.random.default_rng(sum(map(ord, text)))
    return (0.05 * rng.standard_normal(8000 + len(text) * 50)).astype(np.float32)


def test_incremental_pulls_see_every_change_and_only_fetch_those(make_recordings, ls_settings, monkeypatch) -> None:
    rec = make_recordings(sessions=2, segments_per_session=3, live_session=False, synthesize=_quick_synth)
    project_id = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False)).project_id
    client = LabelStudioClient.for_project(ls_settings.label_studio_project())
    with client:
        task = {key: ids[0] for key, ids in sorted(client.all_ext_ids(project_id).items())}
        a, b, c, d, e, untouched = task
        notes = {k: client.create_annotation(task[k], transcription_result(f"texto {k[-7:-4]}")) for k in (a, b, c, d)}
        client.create_annotation(task[e], [], was_cancelled=True)

        first = pull(ls_settings.label_studio_project(), ls_settings.work_paths())
        assert (first.mode, first.annotated_tasks, first.usable, first.new, first.fetched) == ("full", 5, 4, 4, 5)
        manifest = ls_settings.datasets_dir / "manifest.jsonl"
        again = pull(ls_settings.label_studio_project(), ls_settings.work_paths())
        assert (again.mode, again.fetched, again.new, again.updated, again.manifest_changed) == ("incremental", 0, 0, 0, False)

        # update, cancel, delete an annotation, and annotate a new task: exactly those are exported
        client.update_annotation(notes[a]["id"], transcription_result("texto corregido"))
        client.update_annotation(notes[b]["id"], was_cancelled=True)
        client.delete_annotation(notes[c]["id"])
        client.create_annotation(task[untouched], transcription_result("nuevo"))
        third = pull(ls_settings.label_studio_project(), ls_settings.work_paths())
        assert (third.mode, third.fetched, third.new, third.updated, third.removed) == ("incremental", 3, 1, 1, 1)
        assert third.left_out == {"skipped or cancelled": 2}
        rows = {r.segment_key: r.transcript for r in read_manifest(manifest)}
        assert rows == {a: "texto corregido", d: f"texto {d[-7:-4]}", untouched: "nuevo"}
        full = pull(ls_settings.label_studio_project(), ls_settings.work_paths(), full=True)  # a full re-read agrees with the incremental state, byte for byte
        assert (full.mode, full.fetched, full.manifest_changed) == ("full", 5, False)

        # A write whose timestamp was taken before the last pull looked but committed after (a late commit):
        # make the ledger's anchor pretend the pull looked 5 s after this update; the margin still finds it.
        updated = client.update_annotation(notes[d]["id"], transcription_result("actualizado tarde"))
        updated_at = datetime.fromisoformat(client.get_task(task[d])["updated_at"].replace("Z", "+00:00"))
        with Ledger(ls_settings.ledger_path) as ledger:
            ledger.save_pulls(project_id, [], anchor=(updated_at + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        late = pull(ls_settings.label_studio_project(), ls_settings.work_paths())
        assert updated["id"] == notes[d]["id"] and (late.updated, late.fetched) == (1, 1)
        assert {r.segment_key: r.transcript for r in read_manifest(manifest)}[d] == "actualizado tarde"

        # A task deleted outright leaves no updated_at to find: the count of quiet annotated tasks catches it.
        monkeypatch.setattr("sync.pull_changes.SAFETY_MARGIN", timedelta(0))
        time.sleep(1.1)  # the server's Date has whole seconds: let every earlier change fall before the anchor
        pull(ls_settings.label_studio_project(), ls_settings.work_paths())
        client.delete_task(task[a])
        gone = pull(ls_settings.label_studio_project(), ls_settings.work_paths())
        assert (gone.mode, gone.removed, gone.annotated_tasks) == ("incremental + reconciled", 1, 4)
        assert a not in {r.segment_key for r in read_manifest(manifest)}


def test_writes_made_while_the_snapshot_is_read_are_in_that_pull(make_recordings, ls_settings, monkeypatch) -> None:
    """A correction saved, then a task deleted, after Label Studio read the snapshot but before the pull is done.

    Label Studio cannot be made to take a write at that moment by itself, so the writes are made for real, at
    that moment, from the pull's own reader thread (right after the snapshot is in, before the listing).
    """
    rec = make_recordings(sessions=1, segments_per_session=3, live_session=False, synthesize=_quick_synth)
    project_id = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=rec.root, progress=False)).project_id
    writer = LabelStudioClient.for_project(ls_settings.label_studio_project())
    reader = LabelStudioClient.for_project(ls_settings.label_studio_project())
    manifest = ls_settings.datasets_dir / "manifest.jsonl"
    with writer, reader:
        task = {key: ids[0] for key, ids in sorted(writer.all_ext_ids(project_id).items())}
        corrected, kept, deleted = task
        notes = {k: writer.create_annotation(task[k], transcription_result(f"texto {k[-7:-4]}")) for k in task}
        real_read = reader.read_snapshot
        snapshots: list[dict[str, dict]] = []

        def read_then(write):
            def read(project: int, **kwargs) -> bytes:
                body = real_read(project, **kwargs)
                snapshots.append({t["data"]["ext_id"]: t for t in json.loads(body)})
                write()
                return body

            return read

        # The first pull: a correction saved once the snapshot is read is fetched again by the same pull.
        monkeypatch.setattr(reader, "read_snapshot", read_then(
            lambda: writer.update_annotation(notes[corrected]["id"], transcription_result("corregido durante la lectura"))
        ))
        first = pull(ls_settings.label_studio_project(), ls_settings.work_paths(), client=reader)
        assert snapshots[-1][corrected]["annotations"][0]["result"] == notes[corrected]["result"]  # the old text
        assert (first.mode, first.annotated_tasks, first.usable, first.new, first.fetched) == ("full", 3, 3, 3, 3 + 1)
        assert {r.segment_key: r.transcript for r in read_manifest(manifest)} == {
            corrected: "corregido durante la lectura",
            kept: f"texto {kept[-7:-4]}",
            deleted: f"texto {deleted[-7:-4]}",
        }
        again = pull(ls_settings.label_studio_project(), ls_settings.work_paths())
        assert (again.mode, again.fetched, again.new, again.updated, again.manifest_changed) == ("incremental", 0, 0, 0, False)

        # A full pull: a task deleted once the snapshot is read, whose last change is older than the listing's
        # window (no margin here), is found gone by the counts of the quiet region.
        monkeypatch.setattr("sync.pull_changes.SAFETY_MARGIN", timedelta(0))
        time.sleep(1.1)  # the server's Date has whole seconds: let every earlier change fall before the window
        monkeypatch.setattr(reader, "read_snapshot", read_then(lambda: writer.delete_task(task[deleted])))
        second = pull(ls_settings.label_studio_project(), ls_settings.work_paths(), full=True, client=reader)
        assert deleted in snapshots[-1]
        assert (second.mode, second.annotated_tasks, second.removed) == ("full + reconciled", 2, 1)
        assert {r.segment_key for r in read_manifest(manifest)} == {corrected, kept}
    with Ledger(ls_settings.ledger_path) as ledger:
        assert set(ledger.pulls(project_id)) == {task[corrected], task[kept]}
