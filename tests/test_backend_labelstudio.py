"""The backend against a real Label Studio 1.23: connect, retrieve predictions, hot swap, broken audio."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from ml_backend.audio import encode_wav
from ml_backend.cli import connect_backend
from tests.backend_process import BackendProcess
from training.registry import set_current

pytestmark = pytest.mark.labelstudio

LABEL_CONFIG = """<View>
  <Audio name="audio" value="$audio"/>
  <TextArea name="transcription" toName="audio" editable="true" maxSubmissions="1"/>
</View>"""


def _retrieve(ls_http, project_id: int) -> None:
    """Label Studio's own "Retrieve predictions" action of the Data Manager, on all tasks."""
    response = ls_http.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": project_id},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert response.status_code == 200, response.text


def _counts(backend) -> dict[str, int]:
    return httpx.get(backend.url + "/health").json()["predictions"]


def _predictions(ls_http, task_id: int) -> list[dict]:
    response = ls_http.get("/api/predictions/", params={"task": task_id})
    response.raise_for_status()
    return response.json()


def test_label_studio_retrieves_predictions_and_follows_current(
    label_studio, ls_home, ls_http, unique_project_title, tiny_registry, espeak_clip, tmp_path
):
    models = ls_home / "models"
    first = tiny_registry(models)
    # Good tasks: audio in the archive (by sha256) and one Label Studio serves from local files.
    audio_dir = ls_home / "served"
    audio_dir.mkdir()
    task_data = []
    for i, text in enumerate(["Buenos días a todos.", "Abrid el libro."]):
        wav = encode_wav(espeak_clip(text))
        sha = hashlib.sha256(wav).hexdigest()
        (ls_home / "archive" / sha[:2]).mkdir(parents=True, exist_ok=True)
        (ls_home / "archive" / sha[:2] / f"{sha}.wav").write_bytes(wav)
        task_data.append({"audio": f"/data/local-files/?d={ls_home.name}/archive/{sha[:2]}/{sha}.wav", "ext_id": f"s/{i}", "sha256": sha})
    served = encode_wav(espeak_clip("Hasta mañana."))
    (audio_dir / "only-in-ls.wav").write_bytes(served)
    task_data.append({"audio": f"/data/local-files/?d={ls_home.name}/served/only-in-ls.wav", "ext_id": "s/2"})
    # Broken: not in the archive and Label Studio has no such file.
    task_data.append({"audio": f"/data/local-files/?d={ls_home.name}/served/missing.wav", "ext_id": "s/3", "sha256": "0" * 64})

    project = ls_http.post("/api/projects", json={"title": unique_project_title, "label_config": LABEL_CONFIG}).json()
    storage = ls_http.post(
        "/api/storages/localfiles",
        json={"project": project["id"], "path": str(ls_home), "use_blob_urls": False, "title": "habla"},
    )
    assert storage.status_code in (200, 201), storage.text
    imported = ls_http.post(f"/api/projects/{project['id']}/import", json=[{"data": d} for d in task_data])
    assert imported.status_code == 201, imported.text
    tasks = ls_http.get("/api/tasks", params={"project": project["id"], "page_size": 100}).json()["tasks"]
    by_ext = {t["data"]["ext_id"]: t["id"] for t in tasks}

    backend = BackendProcess(
        {"HABLA_LS_HOME": str(ls_home), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
         "HABLA_LS_DEVICE": "cpu"},
        tmp_path / "backend.log",
    ).wait_ready()
    try:
        connected = connect_backend(label_studio.url, label_studio.token, unique_project_title, backend.url)
        assert connected["project"] == project["id"]

        _retrieve(ls_http, project["id"])
        for ext in ("s/0", "s/1", "s/2"):
            predictions = _predictions(ls_http, by_ext[ext])
            assert [p["model_version"] for p in predictions] == [first], ext
            result = predictions[0]["result"][0]
            assert result["from_name"] == "transcription" and result["type"] == "textarea"
            assert 0 <= predictions[0]["score"] <= 1
        assert _predictions(ls_http, by_ext["s/3"]) == []  # the broken task got an error, nothing stored
        assert "task " + str(by_ext["s/3"]) in backend.log_text()
        assert label_studio.token not in backend.log_text()
        counts = _counts(backend)
        assert counts["decoded_clips"] == 3 and counts["errors"] == 1

        # Retrieving again decodes nothing: Label Studio skips tasks that have the served version's
        # prediction, and a task whose prediction was deleted is answered from the prediction cache.
        gone = _predictions(ls_http, by_ext["s/0"])[0]
        assert ls_http.delete(f"/api/predictions/{gone['id']}").status_code == 204
        _retrieve(ls_http, project["id"])
        assert [p["model_version"] for p in _predictions(ls_http, by_ext["s/0"])] == [first]
        assert _predictions(ls_http, by_ext["s/0"])[0]["result"] == gone["result"]
        after = _counts(backend)
        assert after["decoded_clips"] == 3 and after["from_cache"] == counts["from_cache"] + 1

        second = tiny_registry(models)
        set_current(models, second)
        _retrieve(ls_http, project["id"])
        for ext in ("s/0", "s/1", "s/2"):
            versions = sorted(p["model_version"] for p in _predictions(ls_http, by_ext[ext]))
            assert versions == sorted([first, second]), ext
    finally:
        backend.stop()


def _archived_task(home, espeak_clip, text: str, ext_id: str) -> dict:
    wav = encode_wav(espeak_clip(text))
    sha = hashlib.sha256(wav).hexdigest()
    (home / "archive" / sha[:2]).mkdir(parents=True, exist_ok=True)
    (home / "archive" / sha[:2] / f"{sha}.wav").write_bytes(wav)
    return {"audio": f"/data/local-files/?d={home.name}/archive/{sha[:2]}/{sha}.wav", "ext_id": ext_id, "sha256": sha}


def test_opening_a_task_asks_the_backend_for_the_prefill_version(
    label_studio, ls_settings, ls_http, tiny_registry, espeak_clip, tmp_path
):
    """What Label Studio 1.23 does when a task opens, with the backend titled after its served version.

    - Label stream (``/api/projects/<id>/next``): the project's prefill version is the backend's title,
      so Label Studio asks the backend for a task that lacks a prediction of it, even though the task
      has Habla's prediction; after a promotion habla-ls renames the backend and moves the prefill along.
    - Data Manager (``GET /api/tasks/<id>``): Label Studio asks only for a task with no prediction at
      all, which is why round/promote store the served version's predictions ahead.
    """
    from habla_ls.prefill import after_serving_change
    from sync.labelling_config import LABEL_CONFIG, transcription_result

    home = ls_settings.home
    models = ls_settings.models_dir
    first = tiny_registry(models)
    habla = {"model_version": "habla-ground-truth", "result": transcription_result("lo que dijo Habla"), "score": 0.5}
    task_data = [_archived_task(home, espeak_clip, t, f"o/{i}") for i, t in enumerate(["Buenos días.", "Abrid el libro."])]
    project = ls_http.post("/api/projects", json={"title": ls_settings.project_title, "label_config": LABEL_CONFIG}).json()
    storage = ls_http.post("/api/storages/localfiles", json={"project": project["id"], "path": str(home), "use_blob_urls": False})
    assert storage.status_code in (200, 201), storage.text
    imported = ls_http.post(
        f"/api/projects/{project['id']}/import",
        json=[{"data": task_data[0], "predictions": [habla]}, {"data": task_data[1]}],
    )
    assert imported.status_code == 201, imported.text
    tasks = ls_http.get("/api/tasks", params={"project": project["id"]}).json()["tasks"]
    by_ext = {t["data"]["ext_id"]: t["id"] for t in tasks}
    assert ls_http.get(f"/api/projects/{project['id']}").json()["model_version"] == "habla-ground-truth"

    backend = BackendProcess(
        {"HABLA_LS_HOME": str(home), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
         "HABLA_LS_DEVICE": "cpu"},
        tmp_path / "backend.log",
    ).wait_ready()
    try:
        connected = connect_backend(label_studio.url, label_studio.token, ls_settings.project_title, backend.url)
        assert connected["title"] == first  # titled after the version it serves
        decision = after_serving_change(ls_settings, predict=False, echo=lambda line: None)
        assert decision is not None and decision.prefill == first and decision.applied
        assert ls_http.get(f"/api/projects/{project['id']}").json()["model_version"] == first

        # Data Manager, task with Habla's prediction: Label Studio does not ask the backend.
        before = _counts(backend)
        opened = ls_http.get(f"/api/tasks/{by_ext['o/0']}", params={"project": project["id"]}).json()
        assert [p["model_version"] for p in opened["predictions"]] == ["habla-ground-truth"]
        assert _counts(backend)["tasks"] == before["tasks"]
        # Data Manager, task without any prediction: it does.
        opened = ls_http.get(f"/api/tasks/{by_ext['o/1']}", params={"project": project["id"]}).json()
        assert [p["model_version"] for p in opened["predictions"]] == [first]
        assert _counts(backend)["decoded_clips"] == before["decoded_clips"] + 1

        # Label stream: the next task lacks a prediction of the prefill version: Label Studio asks.
        nxt = ls_http.get(f"/api/projects/{project['id']}/next").json()
        assert nxt["id"] == by_ext["o/0"]
        assert [p["model_version"] for p in nxt["predictions"]] == [first]
        assert {p["model_version"] for p in _predictions(ls_http, by_ext["o/0"])} == {"habla-ground-truth", first}

        # A promotion: habla-ls renames the backend and moves the prefill; the page follows at once.
        second = tiny_registry(models, make_current=False)
        set_current(models, second)
        decision = after_serving_change(ls_settings, predict=False, echo=lambda line: None)
        assert decision.prefill == second and any(f"renamed {first} -> {second}" in n for n in decision.notes)
        assert ls_http.get(f"/api/ml/{connected['id']}").json()["title"] == second
        assert ls_http.get(f"/api/projects/{project['id']}").json()["model_version"] == second
        nxt = ls_http.get(f"/api/projects/{project['id']}/next").json()
        assert [p["model_version"] for p in nxt["predictions"]] == [second]
    finally:
        backend.stop()
