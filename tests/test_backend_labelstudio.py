"""The backend against a real Label Studio 1.23: connect, retrieve predictions, hot swap, broken audio."""

from __future__ import annotations

import hashlib

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

        second = tiny_registry(models)
        set_current(models, second)
        _retrieve(ls_http, project["id"])
        for ext in ("s/0", "s/1", "s/2"):
            versions = sorted(p["model_version"] for p in _predictions(ls_http, by_ext[ext]))
            assert versions == sorted([first, second]), ext
    finally:
        backend.stop()
