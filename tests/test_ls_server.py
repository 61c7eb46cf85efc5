"""The Label Studio test server and the client's reusable calls (views, lookups by ext_id, predictions)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sync.labelling_config import LABEL_CONFIG, transcription_result
from sync.ls_client import LabelStudioClient, LabelStudioError, ext_id_filter
from sync.ls_server import Credentials

pytestmark = pytest.mark.labelstudio


def test_credentials_are_hidden_and_saved_private(tmp_path: Path) -> None:
    credentials = Credentials.generate()
    assert credentials.token not in repr(credentials) and credentials.password not in repr(credentials)
    credentials.save(tmp_path / "c.json")
    assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o600
    assert Credentials.load(tmp_path / "c.json") == credentials


def test_client_round_trip_on_the_real_server(label_studio, unique_project_title) -> None:
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        assert client.whoami()["email"]
        project, created = client.ensure_project(unique_project_title, LABEL_CONFIG)
        assert created and client.ensure_project(unique_project_title, LABEL_CONFIG) == (client.find_project(unique_project_title), False)
        tasks = [{"data": {"audio": f"/x/{i}.wav", "ext_id": f"s/segment_{i:03d}.wav"}} for i in range(120)]
        ids = client.import_tasks(project["id"], tasks)
        assert len(ids) == 120 and ids == sorted(ids)
        assert [t["id"] for t in client.iter_tasks(project["id"], page_size=50)] == ids  # pages joined
        found = client.tasks_by_ext_id(project["id"], ["s/segment_007.wav", "s/segment_119.wav", "s/none.wav"])
        assert found == {"s/segment_007.wav": [ids[7]], "s/segment_119.wav": [ids[119]]}
        assert client.create_predictions(project["id"], [{"task": ids[0], "result": transcription_result("hola"), "score": 0.3, "model_version": "v1"}]) == 1
        client.update_task_data(ids[0], {"speaker": "alumno"})
        assert client.get_task(ids[0])["data"] == {"audio": "/x/0.wav", "ext_id": "s/segment_000.wav", "speaker": "alumno"}
        view = client.create_view(project["id"], "doubtful first", filters=[ext_id_filter("s/segment_001.wav")], ordering=["tasks:predictions_score"])
        assert [t["id"] for t in client.iter_tasks(project["id"], view_id=view["id"])] == [ids[1]]
        with pytest.raises(LabelStudioError, match="must be 3 to 50 characters"):
            client.create_project("x" * 51, LABEL_CONFIG)
        client.delete_project(project["id"])
        assert client.find_project(unique_project_title) is None
