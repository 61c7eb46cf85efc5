"""`habla-ls watch` and the shared finish, with a real Label Studio, the real backend and the tiny Whisper.

The tiny random Whisper cannot beat its parent credibly in a test's budget (measured: 60 full
fine-tuning steps, ~100 s on this 2-core machine, left test WER 0.83 with an interval reaching +0.67),
so the tests that need a promotion run the watch with ``--force-promotion``; the real gate's refusal
is what ``tests/test_round.py`` checks through ``round --finish``, the same finish.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from habla_ls.sample_recordings import write_sample_recordings
from ml_backend.audio import encode_wav
from ml_backend.registry import list_versions, read_card, read_current
from sync.labelling_config import transcription_result
from sync.ls_client import LabelStudioClient

pytestmark = pytest.mark.labelstudio

SENTENCES = ("Buenos días a todos.", "Abrid el libro por favor.", "Muy bien, seguimos.")
TRAIN_CONFIG = "max_steps = 2\nbatch_size = 4\nearly_stopping_patience = 0\ngeneration_max_length = 16\n"


@pytest.fixture(autouse=True)
def _short_decoding(monkeypatch):
    # A random tiny Whisper babbles: greedy, no sampled fallbacks, and a short cap.
    monkeypatch.setenv("HABLA_LS_TEMPERATURES", "0")
    monkeypatch.setenv("HABLA_LS_MAX_NEW_TOKENS", "12")


@pytest.fixture
def loop(ls_settings, ls_cli_env, tiny_registry, espeak_clip, tmp_path):
    """A work dir serving the tiny model, a recordings dir, a Habla model dir, a small standard-speech
    regression set (the sentences in a held-out espeak-ng voice) and the environment of the CLI."""
    tiny_registry(ls_settings.models_dir)
    regression = tmp_path / "regression"
    regression.mkdir()
    rows = []
    for i, sentence in enumerate(SENTENCES):
        path = regression / f"r{i}.wav"
        path.write_bytes(encode_wav(espeak_clip(sentence, voice="es-419", speed=140)))
        rows.append({"audio_path": str(path), "transcript": sentence, "duration": 2.0, "speaker": "espeak:es-419", "session": "reg"})
    (regression / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_config = tmp_path / "train.toml"
    train_config.write_text(TRAIN_CONFIG)
    env = dict(ls_cli_env)
    env.update(
        {
            "HABLA_RECORDINGS": str(ls_settings.home.parent / f"rec-{ls_settings.home.name}"),
            "HABLA_LS_REGRESSION_MANIFEST": str(regression / "manifest.jsonl"),
            "HABLA_LS_HABLA_MODEL_DIR": str(tmp_path / "habla-models"),
            "HABLA_LS_WATCH_MIN_CORRECTIONS": "6",
            "HABLA_LS_TEMPERATURES": "0",
            "HABLA_LS_MAX_NEW_TOKENS": "12",
        }
    )
    recordings = Path(env["HABLA_RECORDINGS"])
    settings = dataclasses.replace(ls_settings, recordings=recordings)
    return Loop(settings, env, recordings, tmp_path / "habla-models", train_config)


class Loop:
    def __init__(self, settings, env, recordings, habla_dir, train_config):
        self.settings, self.env, self.recordings, self.habla_dir, self.train_config = settings, env, recordings, habla_dir, train_config
        self.home = settings.home

    def record(self, sessions: int, **options):
        return write_sample_recordings(self.recordings, sentences=SENTENCES, sessions=sessions, segments_per_session=3, **options)

    def watch(self, *args: str):
        return CliRunner().invoke(cli, ["watch", "--once", *args], env=self.env)

    def log(self) -> list[dict]:
        path = self.home / "reports" / "watch.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def tasks(self) -> list[dict]:
        with LabelStudioClient(self.settings.label_studio_url, self.settings.require_api_key()) as client:
            project = client.find_project(self.settings.project_title)
            return list(client.iter_tasks(int(project["id"]), all_fields=True)) if project else []

    def correct(self, tasks: list[dict], references: dict[str, str]) -> None:
        """What a person does in the labelling page, through Label Studio's API."""
        with LabelStudioClient(self.settings.label_studio_url, self.settings.require_api_key()) as client:
            for task in tasks:
                client.create_annotation(task["id"], transcription_result(references[task["data"]["ext_id"]]))

    def status(self) -> dict:
        result = CliRunner().invoke(cli, ["status", "--json"], env=self.env)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)


def steps(entries: list[dict], outcome: str | None = None) -> list[str]:
    return [e["step"] for e in entries if outcome is None or e["outcome"] == outcome]


def test_watch_pushes_finished_sessions_predicts_them_and_waits_for_live_ones(loop):
    recordings = loop.record(sessions=3)  # the last one is live: WAVs, no metadata.json
    live = recordings.live_sessions[0]

    result = loop.watch()

    assert result.exit_code == 0, result.output
    tasks = loop.tasks()
    keys = sorted(t["data"]["ext_id"] for t in tasks)
    assert keys == sorted(s.key for s in recordings.segments if not s.key.startswith(live))
    # Every task carries the served version's prediction (the round), with its rank.
    for task in tasks:
        assert [p["model_version"] for p in task["predictions"] if p["model_version"] == "tiny-v1"] == ["tiny-v1"]
        assert task["data"]["priority"] >= 1
    entries = loop.log()
    assert [(e["step"], e["outcome"]) for e in entries if e["step"] in ("push", "predict", "count")] == [
        ("push", "ok"), ("predict", "ok"), ("count", "ok")
    ]
    assert "1 live session(s) wait" in next(e["detail"] for e in entries if e["step"] == "push")
    status = loop.status()
    assert status["watch"]["last_pass"]["outcome"] == "ok" and not status["watch"]["running"]
    assert status["watch"]["corrections"]["count"] == 0
    assert status["watch"]["next"]["action"] == "push, predict and count"
    assert "threshold 6 corrections" in status["watch"]["next"]["why"]
    text = CliRunner().invoke(cli, ["status"], env=loop.env).output
    assert "watch:         not running" in text and "next:        push, predict and count" in text

    # Habla stops the live session (writes its metadata): the next pass pushes and predicts it, once.
    (recordings.root / live / "metadata.json").write_text(json.dumps({"session_id": "clase", "segments": []}))
    again = loop.watch()
    assert again.exit_code == 0, again.output
    tasks = loop.tasks()
    assert sorted(t["data"]["ext_id"] for t in tasks) == sorted(s.key for s in recordings.segments)
    assert all(sum(p["model_version"] == "tiny-v1" for p in t["predictions"]) == 1 for t in tasks)
    third = loop.watch()
    assert third.exit_code == 0
    assert len(loop.tasks()) == len(recordings.segments)
    assert loop.log()[-3]["step"] == "predict" and loop.log()[-3]["outcome"] == "skipped"


def test_bad_input_and_bad_states_are_one_line_each_and_nothing_is_lost(loop, monkeypatch):
    from habla_ls.watch import Watcher
    from habla_ls.watch_state import WatchOptions, backoff
    from sync import pull as pull_module

    recordings = loop.record(sessions=2, live_session=False)
    corrupt = recordings.root / "clase_20250310_090000"
    corrupt.mkdir()
    (corrupt / "segment_001.wav").write_bytes(b"not a wav at all")
    (corrupt / "metadata.json").write_text("{ torn")
    assert loop.watch().exit_code == 0
    assert loop.watch().exit_code == 0
    problems = [e for e in loop.log() if e["step"] == "push" and e["outcome"] == "skipped"]
    # The corrupt WAV and the corrupt metadata: one line each, not repeated by the second pass.
    assert len(problems) == 2, problems
    assert any("segment_001.wav" in p["detail"] for p in problems) and any("metadata.json" in p["detail"] for p in problems)
    assert len(loop.tasks()) == len(recordings.segments)

    # A full disk while the corrections are pulled: one line, then the next pass catches up.
    loop.correct(loop.tasks()[:2], recordings.references)
    real_write = pull_module.write_manifest

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(loop.settings.datasets_dir / "manifest.jsonl"))

    monkeypatch.setattr(pull_module, "write_manifest", disk_full)
    options = WatchOptions(interval=5, min_corrections=50)
    watcher = Watcher(loop.settings, options)
    failed = watcher.run_pass()
    assert failed.failed
    assert watcher.plan_next(failed) == backoff(5, 1) == 5
    line = loop.log()[-1]
    assert (line["step"], line["outcome"]) == ("count", "failed") and line["detail"].startswith("disk full")
    assert "`habla-ls models prune --dry-run`" in line["detail"]
    monkeypatch.setattr(pull_module, "write_manifest", real_write)
    assert not Watcher(loop.settings, options).run_pass().failed
    manifest = (loop.settings.datasets_dir / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 2  # no correction lost

    # Label Studio down: one line per attempt, and each retry waits twice as long (capped).
    down = dataclasses.replace(loop.settings, label_studio_url="http://127.0.0.1:9")
    watcher = Watcher(down, options)
    for failures in (1, 2, 3):
        result = watcher.run_pass()
        assert result.failed and watcher.plan_next(result) == 5 * 2 ** (failures - 1)
        assert loop.log()[-1]["outcome"] == "failed" and "unreachable" in loop.log()[-1]["detail"]
    assert backoff(60, 20) == 3600
    assert watcher.state["next"]["action"] == "retry the pass"


def test_a_failing_training_changes_nothing_and_is_one_log_line(loop, tmp_path):
    from training.deliver import deliver

    recordings = loop.record(sessions=3, live_session=False)
    deliver(loop.settings.models_dir, "tiny-v1", loop.habla_dir)
    delivered_before = {p.relative_to(loop.habla_dir): p.read_bytes() for p in loop.habla_dir.rglob("*") if p.is_file()}
    assert loop.watch().exit_code == 0
    loop.correct(loop.tasks(), recordings.references)
    broken = tmp_path / "broken.toml"
    broken.write_text('method = "everything"\n')

    result = loop.watch("--train-config", str(broken))

    assert result.exit_code == 1
    print(result.output)
    assert [line.split(": ")[0].split()[-1] for line in result.output.splitlines() if "failed" in line] == ["finish:train"]
    failures = [e for e in loop.log() if e["outcome"] == "failed"]
    assert [e["step"] for e in failures] == ["finish:train"]
    assert "method must be 'lora' or 'full'" in failures[0]["detail"]
    assert read_current(loop.settings.models_dir) == "tiny-v1" and list_versions(loop.settings.models_dir) == ["tiny-v1"]
    assert {p.relative_to(loop.habla_dir): p.read_bytes() for p in loop.habla_dir.rglob("*") if p.is_file()} == delivered_before
    # The next pass pushes and counts as usual but waits before trying the finish again (backoff), said once.
    assert loop.watch("--train-config", str(broken)).exit_code == 0
    assert loop.watch("--train-config", str(broken)).exit_code == 0
    assert len([e for e in loop.log() if e["outcome"] == "failed"]) == 1
    assert len([e for e in loop.log() if e["step"] == "finish" and e["outcome"] == "skipped"]) == 1
    watch = loop.status()["watch"]
    assert watch["finish_failures"] == 1 and watch["last_failure"]["step"] == "finish:train"
    assert watch["next"]["action"] == "resume the finish"
    assert loop.status()["finish"]["unfinished"]["failed"]["step"] == "train"


def test_a_version_registered_just_before_a_kill_is_adopted_and_a_refused_one_is_not_delivered(loop, tiny_registry):
    from habla_ls.finish_journal import read_manifest, save_state

    recordings = loop.record(sessions=4, live_session=False)
    assert loop.watch().exit_code == 0
    loop.correct(loop.tasks(), recordings.references)
    assert CliRunner().invoke(cli, ["sync", "pull"], env=loop.env).exit_code == 0
    # The journal of a finish killed after its training registered habla-v1 and before it noted so.
    save_state(loop.home, {"run": {"started": "2025-01-01T00:00:00+00:00", "done": [], "versions_before": ["tiny-v1"],
                                   "training_manifest": read_manifest(loop.settings).fingerprint}})
    tiny_registry(loop.settings.models_dir, name="habla", make_current=False)

    result = CliRunner().invoke(cli, ["finish"], env=loop.env)

    assert result.exit_code == 0, result.output
    assert "habla-v1 was registered by the interrupted training; using it" in result.output
    assert list_versions(loop.settings.models_dir) == ["habla-v1", "tiny-v1"]
    # The same weights as the served version: the real gate refuses it, an answer. Neither served nor delivered.
    assert "not promoted: the gate refused habla-v1 against tiny-v1" in result.output
    assert read_current(loop.settings.models_dir) == "tiny-v1" and not loop.habla_dir.exists()
    # Nothing new since: a second finish answers without training.
    again = CliRunner().invoke(cli, ["finish"], env=loop.env)
    assert again.exit_code == 0 and "up to date: nothing new since habla-v1 was trained" in again.output


@pytest.mark.slow
def test_corrections_reach_the_threshold_and_the_new_version_is_served_and_delivered(loop, tmp_path):
    from tests.backend_process import BackendProcess

    recordings = loop.record(sessions=4, live_session=False)
    backend = BackendProcess(
        {"HABLA_LS_HOME": str(loop.home), "HABLA_LS_DEVICE": "cpu", "LABEL_STUDIO_URL": loop.settings.label_studio_url,
         "LABEL_STUDIO_API_KEY": loop.settings.label_studio_api_key, "HABLA_LS_PROJECT": loop.settings.project_title,
         "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": loop.env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"],
         "HABLA_LS_REGRESSION_MANIFEST": loop.env["HABLA_LS_REGRESSION_MANIFEST"]},
        tmp_path / "backend.log",
    ).wait_ready()
    habla_env = tmp_path / "habla.env"  # Habla's own .env: its WHISPER_MODEL line follows the delivery
    habla_env.write_text("PORT=8002\nWHISPER_MODEL=large-v3\n")
    loop.env["HABLA_LS_HABLA_ENV_FILE"] = str(habla_env)
    try:
        assert loop.watch().exit_code == 0
        tasks = loop.tasks()
        assert len(tasks) == 12
        loop.correct(tasks[:5], recordings.references)
        assert loop.watch().exit_code == 0
        assert "count" in steps(loop.log()) and "finish" not in {s.split(":")[0] for s in steps(loop.log())}
        loop.correct(tasks[5:], recordings.references)  # now 12 corrections: over the threshold of 6

        result = loop.watch("--train-config", str(loop.train_config), "--force-promotion")

        assert result.exit_code == 0, result.output
        entries = loop.log()
        assert [e["step"] for e in entries if e["step"].startswith("finish:") and e["outcome"] == "ok"] == [
            "finish:pull", "finish:train", "finish:evaluate", "finish:gate", "finish:export", "finish:promote",
            "finish:deliver", "finish:prefill",
        ]
        assert entries[-2]["step"] == "finish" and entries[-2]["outcome"] == "promoted"
        assert read_current(loop.settings.models_dir) == "habla-v1"
        card = read_card(loop.settings.models_dir / "habla-v1")
        assert card["parent"] == "tiny-v1" and card["gate"]["forced"] is True  # forced: see the module docstring
        # The running backend serves it from its next request, and Label Studio's tasks have its predictions.
        assert httpx.get(backend.url + "/health").json()["model_version"] == "habla-v1"
        asked = [{"id": t["id"], "data": t["data"]} for t in tasks[:1]]
        answer = httpx.post(backend.url + "/predict", json={"tasks": asked}, timeout=120).json()
        assert answer["results"][0]["model_version"] == "habla-v1"
        # Delivered where Habla loads it, with the line Habla reads.
        env_line = (loop.habla_dir / "whisper_model.env").read_text().strip()
        assert env_line == f"WHISPER_MODEL={loop.habla_dir / 'habla-v1'}"
        assert (loop.habla_dir / "habla-v1" / "model.bin").is_file()
        assert habla_env.read_text() == f"PORT=8002\n{env_line}\n"
        assert loop.status()["finish"]["last"]["outcome"] == "promoted"

        # The backend's /train runs the same finish (not bare training): nothing new since habla-v1.
        assert httpx.post(backend.url + "/train", timeout=5).json()["status"].startswith("queued")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and httpx.get(backend.url + "/health").json()["training"]["runs"] < 1:
            time.sleep(0.5)
        training = httpx.get(backend.url + "/health").json()["training"]
        log_text = (loop.home / "reports" / "backend-training.log").read_text()
        assert training["last_exit_code"] == 0, log_text[-3000:]
        assert "up to date: nothing new since habla-v1 was trained" in log_text
        assert list_versions(loop.settings.models_dir) == ["habla-v1", "tiny-v1"]
    finally:
        backend.stop()


def _wait_for(path: Path, step: str, outcome: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (step, outcome) in _outcomes(path):
            return
        if process.poll() is not None:
            raise AssertionError(f"watch exited with {process.returncode} before {step} {outcome}")
        time.sleep(0.1)
    raise AssertionError(f"no {step} {outcome} in {path}")


@pytest.mark.slow
def test_kill_9_and_sigterm_during_a_finish_then_the_next_start_carries_on(loop):
    recordings = loop.record(sessions=4, live_session=False)
    assert loop.watch().exit_code == 0
    loop.correct(loop.tasks(), recordings.references)
    env = {**os.environ, **loop.env}
    command = [sys.executable, "-m", "habla_ls.cli", "watch", "--interval", "3600",
               "--train-config", str(loop.train_config), "--force-promotion"]
    log_file = loop.home / "reports" / "watch.jsonl"
    log_file.unlink()

    # kill -9 as soon as the training has started: the finish (its child) dies with it.
    watch = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(log_file, "finish:train", "started", watch)
    watch.send_signal(signal.SIGKILL)
    watch.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _finish_children(loop.home):
        time.sleep(0.1)
    assert not _finish_children(loop.home)
    assert read_current(loop.settings.models_dir) == "tiny-v1"  # consistent: nothing half-registered is served
    assert all(not v.startswith(".") for v in list_versions(loop.settings.models_dir))

    # Started again, it resumes the finish; SIGTERM then stops it after the current step (exit 0).
    log_file.unlink()
    watch = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(log_file, "finish:train", "started", watch)
    watch.send_signal(signal.SIGTERM)
    _, err = watch.communicate(timeout=300)
    assert watch.returncode == 0, err.decode()[-2000:]
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert ("finish", "stopped") in [(e["step"], e["outcome"]) for e in entries]
    assert entries[-1]["step"] == "watch" and entries[-1]["detail"] == "stopped by a signal"
    assert "count" in steps(entries) and "an earlier finish did not end" in next(e["detail"] for e in entries if e["step"] == "count")

    # The next start carries on from where it stopped and completes.
    result = loop.watch("--train-config", str(loop.train_config), "--force-promotion")
    assert result.exit_code == 0, result.output
    resumed = [e["step"] for e in loop.log() if e["step"].startswith("finish:") and e["outcome"] == "ok"]
    assert "finish:pull" not in resumed[-6:] and resumed[-1] == "finish:prefill"
    assert read_current(loop.settings.models_dir) == "habla-v1"
    assert list_versions(loop.settings.models_dir) == ["habla-v1", "tiny-v1"]  # trained once: no stray version
    assert not list(loop.settings.models_dir.glob(".staging-*"))
    assert loop.status()["finish"]["unfinished"] is None
    tasks = loop.tasks()
    assert len(tasks) == len(recordings.segments)  # no duplicate task
    assert len((loop.settings.datasets_dir / "manifest.jsonl").read_text().splitlines()) == len(tasks)  # no lost correction


def _outcomes(path: Path) -> set[tuple[str, str]]:
    found = set()
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line being written
        found.add((entry["step"], entry["outcome"]))
    return found


def _finish_children(home: Path) -> list[int]:
    """Pids of `habla-ls finish` processes working on ``home`` (none must outlive the watch's kill)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"finish" in cmdline and str(home.resolve()).encode() in cmdline:
                found.append(int(proc.name))
    return found
