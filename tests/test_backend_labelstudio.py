"""The backend against a real Label Studio 1.23: connect, retrieve predictions, hot swap, broken audio."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from habla_ls.cli_backend import connect_backend
from ml_backend.audio import encode_wav
from sync.ls_client import LabelStudioClient
from sync.served_audio import audio_url
from tests.backend_process import BackendProcess
from training.registry import set_current

pytestmark = pytest.mark.labelstudio

LABEL_CONFIG = """<View>
  <Audio name="audio" value="$audio"/>
  <TextArea name="transcription" toName="audio" editable="true" maxSubmissions="1"/>
</View>"""



def _retrieve(ls_client: LabelStudioClient, project_id: int) -> None:
    """Label Studio's own "Retrieve predictions" action of the Data Manager, on all tasks."""
    ls_client.sdk.actions.create(
        id="retrieve_tasks_predictions", project=project_id, selected_items={"all": True, "excluded": []}
    )


def _counts(backend) -> dict[str, int]:
    return httpx.get(backend.url + "/health").json()["predictions"]


def _predictions(ls_client: LabelStudioClient, task_id: int) -> list[dict]:
    # Not the task itself: reading a task with no prediction makes Label Studio ask the backend.
    return [p.dict() for p in ls_client.sdk.predictions.list(task=task_id)]


def _local_files_url(path, document_root) -> str:
    """How Label Studio's local-files storage names ``path``: relative to the document root it serves."""
    return audio_url(Path(path).resolve().relative_to(Path(document_root).resolve()).as_posix())


def _project(ls_client: LabelStudioClient, title: str, label_config: str, audio_dir) -> int:
    """A project whose local-files storage serves ``audio_dir``."""
    project_id = int(ls_client.create_project(title, label_config)["id"])
    ls_client.ensure_local_storage(project_id, str(audio_dir), title="habla")
    return project_id


def test_label_studio_retrieves_predictions_and_follows_current(
    label_studio, ls_home, ls_document_root, ls_client, unique_project_title, tiny_registry, espeak_clip, tmp_path
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
        task_data.append({"audio": _local_files_url(ls_home / "archive" / sha[:2] / f"{sha}.wav", ls_document_root), "ext_id": f"s/{i}", "sha256": sha})
    served = encode_wav(espeak_clip("Hasta mañana."))
    (audio_dir / "only-in-ls.wav").write_bytes(served)
    task_data.append({"audio": _local_files_url(audio_dir / "only-in-ls.wav", ls_document_root), "ext_id": "s/2"})
    # Broken: not in the archive and Label Studio has no such file.
    task_data.append({"audio": _local_files_url(audio_dir / "missing.wav", ls_document_root), "ext_id": "s/3", "sha256": "0" * 64})

    project_id = _project(ls_client, unique_project_title, LABEL_CONFIG, ls_home)
    ids = ls_client.import_tasks(project_id, [{"data": d} for d in task_data])
    by_ext = {d["ext_id"]: task_id for d, task_id in zip(task_data, ids, strict=True)}

    backend = BackendProcess(
        {"HABLA_LS_HOME": str(ls_home), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
         "HABLA_LS_DEVICE": "cpu"},
        tmp_path / "backend.log",
    ).wait_ready()
    try:
        connected = connect_backend(ls_client, unique_project_title, backend.url)
        assert connected["project"] == project_id
        assert ls_client.get_project(project_id)["show_collab_predictions"] is True

        _retrieve(ls_client, project_id)
        for ext in ("s/0", "s/1", "s/2"):
            predictions = _predictions(ls_client, by_ext[ext])
            assert [p["model_version"] for p in predictions] == [first], ext
            result = predictions[0]["result"][0]
            assert result["from_name"] == "transcription" and result["type"] == "textarea"
            assert 0 <= predictions[0]["score"] <= 1
        assert _predictions(ls_client, by_ext["s/3"]) == []  # the broken task got an error, nothing stored
        assert "task " + str(by_ext["s/3"]) in backend.log_text()
        assert label_studio.token not in backend.log_text()
        counts = _counts(backend)
        assert counts["decoded_clips"] == 3 and counts["errors"] == 1

        # Retrieving again decodes nothing: Label Studio skips tasks that have the served version's
        # prediction, and a task whose prediction was deleted is answered from the prediction cache.
        gone = _predictions(ls_client, by_ext["s/0"])[0]
        ls_client.delete_prediction(gone["id"])
        _retrieve(ls_client, project_id)
        assert [p["model_version"] for p in _predictions(ls_client, by_ext["s/0"])] == [first]
        assert _predictions(ls_client, by_ext["s/0"])[0]["result"] == gone["result"]
        after = _counts(backend)
        assert after["decoded_clips"] == 3 and after["from_cache"] == counts["from_cache"] + 1

        second = tiny_registry(models)
        set_current(models, second)
        _retrieve(ls_client, project_id)
        for ext in ("s/0", "s/1", "s/2"):
            versions = sorted(p["model_version"] for p in _predictions(ls_client, by_ext[ext]))
            assert versions == sorted([first, second]), ext

        # The command: connecting again updates the backend already there; a wrong project is one line.
        env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token, "HABLA_LS_HOME": str(ls_home)}
        again = CliRunner().invoke(
            cli, ["backend", "connect", "--project", unique_project_title, "--url", backend.url, "--title", "by hand"], env=env
        )
        assert again.exit_code == 0, again.output
        assert f"connected ML backend {connected['id']} ({backend.url}, titled 'by hand')" in again.output
        assert [(b["id"], b["title"]) for b in ls_client.ml_backends(project_id)] == [(connected["id"], "by hand")]
        missing = CliRunner().invoke(cli, ["backend", "connect", "--project", "no such project", "--url", backend.url], env=env)
        assert missing.exit_code == 1 and missing.output.count("\n") == 1
        assert "has no project titled 'no such project'" in missing.output and label_studio.token not in missing.output
    finally:
        backend.stop()


def _archived_task(home, document_root, espeak_clip, text: str, ext_id: str) -> dict:
    from sync.labelling_config import EMPTY_CHECKS

    wav = encode_wav(espeak_clip(text))
    sha = hashlib.sha256(wav).hexdigest()
    (home / "archive" / sha[:2]).mkdir(parents=True, exist_ok=True)
    (home / "archive" / sha[:2] / f"{sha}.wav").write_bytes(wav)
    # The keys of the page's word checks come with every task habla-ls pushes (Label Studio requires them).
    return {"audio": _local_files_url(home / "archive" / sha[:2] / f"{sha}.wav", document_root), "ext_id": ext_id, "sha256": sha,
            **EMPTY_CHECKS}


def _open_in_data_manager(ls_client: LabelStudioClient, project_id: int, task_id: int) -> dict:
    """What the Data Manager asks when a task is clicked (the SDK's tasks.get sends no project)."""
    return ls_client.request("GET", f"api/tasks/{task_id}", params={"project": project_id})


def _next_in_label_stream(ls_client: LabelStudioClient, project_id: int) -> dict:
    """What "Label All Tasks" asks for (no SDK method)."""
    return ls_client.request("GET", f"api/projects/{project_id}/next")


def test_opening_a_task_asks_the_backend_for_the_prefill_version(
    label_studio, ls_settings, ls_client, tiny_registry, espeak_clip, tmp_path
):
    """What Label Studio 1.23 does when a task opens, with the backend titled after its served version.

    - Label stream (``/api/projects/<id>/next``): the project's prefill version is the backend's title,
      so Label Studio asks the backend for a task that lacks a prediction of it, even though the task
      has Habla's prediction; after a promotion habla-ls renames the backend and moves the prefill along.
    - Data Manager (``GET /api/tasks/<id>``): Label Studio asks only for a task with no prediction at
      all, which is why round/promote store the served version's predictions ahead.
    """
    from habla_ls.serving_change import after_serving_change
    from sync.labelling_config import LABEL_CONFIG, transcription_result

    home = ls_settings.home
    models = ls_settings.models_dir
    first = tiny_registry(models)
    habla = {"model_version": "habla-ground-truth", "result": transcription_result("lo que dijo Habla"), "score": 0.5}
    task_data = [_archived_task(home, ls_settings.document_root, espeak_clip, t, f"o/{i}") for i, t in enumerate(["Buenos días.", "Abrid el libro."])]
    project_id = _project(ls_client, ls_settings.project_title, LABEL_CONFIG, home)
    ids = ls_client.import_tasks(project_id, [{"data": task_data[0], "predictions": [habla]}, {"data": task_data[1]}])
    by_ext = {"o/0": ids[0], "o/1": ids[1]}
    assert ls_client.get_project(project_id)["model_version"] == "habla-ground-truth"

    backend = BackendProcess(
        {"HABLA_LS_HOME": str(home), "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
         "HABLA_LS_DEVICE": "cpu"},
        tmp_path / "backend.log",
    ).wait_ready()
    try:
        connected = connect_backend(ls_client, ls_settings.project_title, backend.url)
        assert connected["title"] == first  # titled after the version it serves
        decision = after_serving_change(ls_settings, predict=False, echo=lambda line: None)
        assert decision is not None and decision.prefill == first and decision.applied
        assert ls_client.get_project(project_id)["model_version"] == first

        # Data Manager, task with Habla's prediction: Label Studio does not ask the backend.
        before = _counts(backend)
        opened = _open_in_data_manager(ls_client, project_id, by_ext["o/0"])
        assert [p["model_version"] for p in opened["predictions"]] == ["habla-ground-truth"]
        assert _counts(backend)["tasks"] == before["tasks"]
        # Data Manager, task without any prediction: it does.
        opened = _open_in_data_manager(ls_client, project_id, by_ext["o/1"])
        assert [p["model_version"] for p in opened["predictions"]] == [first]
        assert _counts(backend)["decoded_clips"] == before["decoded_clips"] + 1

        # Label stream: the next task lacks a prediction of the prefill version: Label Studio asks.
        nxt = _next_in_label_stream(ls_client, project_id)
        assert nxt["id"] == by_ext["o/0"]
        assert [p["model_version"] for p in nxt["predictions"]] == [first]
        assert {p["model_version"] for p in _predictions(ls_client, by_ext["o/0"])} == {"habla-ground-truth", first}

        # A promotion: habla-ls renames the backend and moves the prefill; the page follows at once.
        second = tiny_registry(models, make_current=False)
        set_current(models, second)
        decision = after_serving_change(ls_settings, predict=False, echo=lambda line: None)
        assert decision.prefill == second and any(f"renamed {first} -> {second}" in n for n in decision.notes)
        assert ls_client.sdk.ml.get(connected["id"]).title == second
        assert ls_client.get_project(project_id)["model_version"] == second
        nxt = _next_in_label_stream(ls_client, project_id)
        assert [p["model_version"] for p in nxt["predictions"]] == [second]
    finally:
        backend.stop()
