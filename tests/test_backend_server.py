"""The backend over real HTTP: uvicorn subprocess serving the tiny model from a registry."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.server
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ml_backend.audio import encode_wav
from ml_backend.config import ENV_VARS, BackendConfig
from tests.backend_process import BackendProcess
from training.registry import set_current

LABEL_CONFIG = '<View><Audio name="speech" value="$audio"/><TextArea name="words" toName="speech"/></View>'


def archive(home: Path, wav: bytes) -> str:
    sha = hashlib.sha256(wav).hexdigest()
    path = home / "archive" / sha[:2] / f"{sha}.wav"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(wav)
    return sha


@pytest.fixture(scope="module")
def audio_host(tmp_path_factory):
    """A plain HTTP file server on 127.0.0.1 standing in as 'the Label Studio host' for downloads."""
    root = tmp_path_factory.mktemp("audio-host")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def served(tmp_path_factory, audio_host, tiny_whisper_dir, tiny_ct2_dir):
    import shutil

    from ml_backend.registry import CT2_SUBDIR, HF_SUBDIR
    from tests.fixtures_models import tiny_registry as _  # noqa: F401 - documents where the layout comes from
    from training.registry import new_version, write_card

    home = tmp_path_factory.mktemp("backend-home")

    def register(name="tiny"):
        with new_version(home / "models", name) as (version, staging):
            shutil.copytree(tiny_whisper_dir, staging / HF_SUBDIR)
            shutil.copytree(tiny_ct2_dir, staging / CT2_SUBDIR)
            write_card(staging, {"version": version, "name": name})
        return version

    first = register()
    set_current(home / "models", first)
    marker = home / "trainings.txt"
    (home / "job.py").write_text(TRAINING_JOB.format(marker=str(marker), home=str(home)))
    train = f"{sys.executable} {home / 'job.py'}"
    backend = BackendProcess(
        {"HABLA_LS_HOME": str(home), "LABEL_STUDIO_URL": audio_host[1], "LABEL_STUDIO_API_KEY": "secret-ls-token-123",
         "HABLA_LS_TRAIN_COMMAND": train, "HABLA_LS_DEVICE": "cpu"},
        tmp_path_factory.mktemp("backend-log") / "backend.log",
    ).wait_ready()
    yield backend, home, register, marker
    backend.stop()


# Stands in for `habla-ls finish` (which needs Label Studio): records that it ran, whether the training
# lock was held for it and whether the finish's own lock joins it, then waits for the test's go-ahead.
TRAINING_JOB = """
import fcntl, os, pathlib, time
from habla_ls.training_lock import LockBusy, lock_path, training_lock
marker, home = pathlib.Path(r"{marker}"), pathlib.Path(r"{home}")
with open(lock_path(home), "a+") as other:
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held = "free"
    except BlockingIOError:
        held = "held"
try:
    with training_lock(home, wait=False):
        joined = "joined"
except LockBusy:
    joined = "busy"
with marker.open("a") as fh:
    fh.write(f"start {{held}} {{joined}}\\n")
go = home / "go"
for _ in range(600):
    if go.exists():
        break
    time.sleep(0.05)
with marker.open("a") as fh:
    fh.write("end\\n")
"""


def test_env_vars_documented():
    for name in ("HABLA_LS_HOME", "HABLA_LS_MODEL", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "HABLA_LS_LANGUAGE",
                 "HABLA_LS_DEVICE", "HABLA_LS_COMPUTE_TYPE", "BASIC_AUTH_USER", "BASIC_AUTH_PASS",
                 "BACKEND_BEARER_TOKEN", "PORT", "WORKERS"):
        assert ENV_VARS[name]
    config = BackendConfig.from_env({"LABEL_STUDIO_API_KEY": "ls-secret-1", "BACKEND_BEARER_TOKEN": "bearer-secret-2"})
    assert "ls-secret-1" not in repr(config) and "bearer-secret-2" not in repr(config)


def test_predict_batch_with_per_task_errors(served, audio_host, espeak_clip):
    backend, home, _register, _marker = served
    root, host = audio_host
    good = encode_wav(espeak_clip("Hola a todos."))
    sha = archive(home, good)
    (root / "clip.wav").write_bytes(encode_wav(espeak_clip("Buenas tardes.")))
    corrupt_sha = archive(home, b"RIFF....garbage" * 10)
    tasks = [
        {"id": 1, "data": {"audio": "/data/upload/whatever.wav", "sha256": sha}},  # from the archive
        {"id": 2, "data": {"audio": "/clip.wav"}},  # downloaded from the LS host
        {"id": 3, "data": {"audio": "/missing.wav"}},  # 404 on the LS host
        {"id": 4, "data": {"audio": "http://example.com/clip.wav"}},  # foreign host: refused
        {"id": 5, "data": {"sha256": corrupt_sha}},  # corrupt audio in the archive
        {"id": 6, "data": {"audio": f"{host}/clip.wav"}},  # absolute URL on the LS host
    ]
    response = httpx.post(backend.url + "/predict", json={"tasks": tasks, "label_config": LABEL_CONFIG}, timeout=120)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 6
    for i in (0, 1, 5):
        assert results[i]["model_version"] == "tiny-v1"
        assert results[i]["result"][0]["from_name"] == "words" and results[i]["result"][0]["to_name"] == "speech"
        assert results[i]["result"][0]["type"] == "textarea"
        assert 0 <= results[i]["score"] <= 1
    assert "result" not in results[2] and "task 3" in results[2]["error"] and "404" in results[2]["error"]
    assert "refusing" in results[3]["error"] and "example.com" in results[3]["error"]
    assert "task 5" in results[4]["error"] and "unreadable" in results[4]["error"]
    assert "secret-ls-token-123" not in backend.log_text()


def test_concurrent_predicts_each_get_their_own_answer(served, espeak_clip):
    backend, home, _register, _marker = served
    texts = ["Uno dos tres.", "Buenos días.", "La pizarra.", "Abrid el libro.", "Hasta mañana.", "Muy bien."]
    shas = [archive(home, encode_wav(espeak_clip(t))) for t in texts]

    def ask(sha):
        r = httpx.post(backend.url + "/predict", json={"tasks": [{"id": 1, "data": {"sha256": sha}}]}, timeout=120)
        r.raise_for_status()
        return r.json()["results"][0]

    sequential = [ask(s) for s in shas]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        parallel = list(pool.map(ask, shas))
    assert [p["result"] for p in parallel] == [s["result"] for s in sequential]
    assert [p["score"] for p in parallel] == pytest.approx([s["score"] for s in sequential], abs=1e-3)


def test_hot_swap_without_restart(served, espeak_clip):
    backend, home, register, _marker = served
    sha = archive(home, encode_wav(espeak_clip("Cambio de modelo.")))
    assert httpx.post(backend.url + "/setup", json={}).json()["model_version"] == "tiny-v1"
    slow = [{"id": i, "data": {"sha256": sha}} for i in range(12)]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(httpx.post, backend.url + "/predict", json={"tasks": slow}, timeout=120)
        time.sleep(0.05)
        second = register()
        set_current(home / "models", second)
        answered = in_flight.result()
    assert answered.status_code == 200 and all("result" in r for r in answered.json()["results"])
    after = httpx.post(backend.url + "/predict", json={"tasks": [{"id": 1, "data": {"sha256": sha}}]}, timeout=120).json()
    assert after["results"][0]["model_version"] == second
    assert httpx.get(backend.url + "/health").json()["model_version"] == second
    set_current(home / "models", "tiny-v1")


def test_webhooks_count_and_training_runs_in_background_one_at_a_time(served):
    backend, home, _register, marker = served
    for action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_CREATED"):
        assert httpx.post(backend.url + "/webhook", json={"action": action, "annotation": {"id": 1}}).status_code == 200
    assert httpx.get(backend.url + "/health").json()["annotation_events"] == 3
    # The job waits for the go-ahead below, so both answers came while it had not finished: never in the request.
    first = httpx.post(backend.url + "/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}, timeout=30)
    second = httpx.post(backend.url + "/train", timeout=30)
    assert first.json()["status"].startswith("queued") and second.json()["status"].startswith("queued")
    assert httpx.get(backend.url + "/health").json()["training"]["state"] in ("running", "queued")
    (home / "go").touch()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and httpx.get(backend.url + "/health").json()["training"]["runs"] < 2:
        time.sleep(0.2)
    # Two runs, never overlapping; the lock was held for each, and the finish's own lock joined it (no deadlock).
    assert marker.read_text() == "start held joined\nend\nstart held joined\nend\n"
    assert httpx.get(backend.url + "/health").json()["training"]["last_exit_code"] == 0


def test_the_default_training_command_is_the_finish():
    from ml_backend.training_queue import DEFAULT_TRAIN_COMMAND

    config = BackendConfig.from_env({})
    assert config.train_command == DEFAULT_TRAIN_COMMAND
    assert DEFAULT_TRAIN_COMMAND.endswith("-m habla_ls.cli finish")
    assert BackendConfig.from_env({"HABLA_LS_TRAIN_COMMAND": "habla-ls finish --force"}).train_command == "habla-ls finish --force"


def test_auth_bearer_and_basic(tmp_path, tiny_ct2_dir):
    token, password = "bearer-secret-xyz", "basic-secret-xyz"
    backend = BackendProcess(
        {"HABLA_LS_MODEL": str(tiny_ct2_dir), "HABLA_LS_HOME": str(tmp_path), "BACKEND_BEARER_TOKEN": token,
         "BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": password},
        tmp_path / "backend.log",
    ).wait_ready()
    try:
        assert httpx.post(backend.url + "/setup", json={}).status_code == 401
        assert httpx.post(backend.url + "/setup", json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.post(backend.url + "/setup", json={}, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert httpx.post(backend.url + "/setup", json={}, auth=("ls", password)).status_code == 200
        assert httpx.post(backend.url + "/setup", json={}, auth=("ls", "wrong")).status_code == 401
        log = backend.log_text()
        assert token not in log and password not in log
    finally:
        backend.stop()


def _counts(backend) -> dict[str, int]:
    return httpx.get(backend.url + "/health").json()["predictions"]


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def test_nothing_is_decoded_twice(served, audio_host, espeak_clip):
    backend, home, _register, _marker = served
    root, _host = audio_host
    sha = archive(home, encode_wav(espeak_clip("Una vez basta.")))
    task = {"id": 7, "data": {"audio": "/data/upload/x.wav", "sha256": sha}}

    before = _counts(backend)
    first = httpx.post(backend.url + "/predict", json={"tasks": [task, task]}, timeout=120).json()["results"]
    after_first = _counts(backend)
    assert _delta(before, after_first) == {"requests": 1, "tasks": 2, "decoded": 2, "decoded_clips": 1, "decode_batches": 1}
    assert first[0]["result"] == first[1]["result"]

    second = httpx.post(backend.url + "/predict", json={"tasks": [task]}, timeout=120).json()["results"][0]
    assert _delta(after_first, _counts(backend)) == {"requests": 1, "tasks": 1, "from_cache": 1}
    assert second["result"] == first[0]["result"] and second["score"] == first[0]["score"]
    assert second["model_version"] == "tiny-v1"

    # The task as Label Studio sends it, with its own prediction of the served version: answered from it.
    stored = {"model_version": "tiny-v1", "score": 0.25, "result": [{"from_name": "transcription", "to_name": "audio",
              "type": "textarea", "value": {"text": ["lo que ya tenía"]}}]}
    other = dict(stored, model_version="habla-ground-truth", result=[{"value": {"text": ["de Habla"]}}])
    new_sha = archive(home, encode_wav(espeak_clip("Otra frase distinta.")))
    carrying = {"id": 8, "data": {"sha256": new_sha}, "predictions": [other, stored]}
    mark = _counts(backend)
    answer = httpx.post(backend.url + "/predict", json={"tasks": [carrying]}, timeout=120).json()["results"][0]
    assert _delta(mark, _counts(backend)) == {"requests": 1, "tasks": 1, "from_task": 1}
    assert answer["result"] == stored["result"] and answer["score"] == 0.25

    # Audio downloaded from the Label Studio host has no sha256 in the task: its bytes give the key.
    (root / "again.wav").write_bytes(encode_wav(espeak_clip("Una vez basta.")))
    mark = _counts(backend)
    downloaded = httpx.post(backend.url + "/predict", json={"tasks": [{"id": 9, "data": {"audio": "/again.wav"}}]}, timeout=120)
    assert _delta(mark, _counts(backend)) == {"requests": 1, "tasks": 1, "from_cache": 1}
    assert downloaded.json()["results"][0]["result"] == first[0]["result"]


def test_a_version_swap_is_a_different_key(served, espeak_clip):
    backend, home, register, _marker = served
    sha = archive(home, encode_wav(espeak_clip("Cambia la versión.")))
    task = {"id": 1, "data": {"sha256": sha}}
    httpx.post(backend.url + "/predict", json={"tasks": [task]}, timeout=120).raise_for_status()
    second = register()
    set_current(home / "models", second)
    try:
        mark = _counts(backend)
        answer = httpx.post(backend.url + "/predict", json={"tasks": [task]}, timeout=120).json()["results"][0]
        assert answer["model_version"] == second
        assert _delta(mark, _counts(backend))["decoded_clips"] == 1
        mark = _counts(backend)
        httpx.post(backend.url + "/predict", json={"tasks": [task]}, timeout=120).raise_for_status()
        assert _delta(mark, _counts(backend)) == {"requests": 1, "tasks": 1, "from_cache": 1}
    finally:
        set_current(home / "models", "tiny-v1")
