"""`habla-ls round` and `habla-ls status` against a real Label Studio with the tiny Whisper."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from habla_ls.round import run_round
from sync.labelling_config import SAMPLING_ROUND_ORDER, label_order_score
from sync.ls_client import LabelStudioClient
from sync.push import PushOptions, push

pytestmark = [pytest.mark.labelstudio, pytest.mark.usefixtures("tiny_decoding")]


@pytest.fixture
def pushed(ls_settings, make_recordings, tiny_registry):
    recordings = make_recordings(ls_settings.home.parent / f"rec-{ls_settings.home.name}", sessions=3, segments_per_session=4, speakers=("profesora", "alumno"))
    tiny_registry(ls_settings.models_dir)
    summary = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=recordings.root, progress=False))
    assert summary.new == len(recordings.segments)
    return recordings


def _tasks(ls_settings):
    with LabelStudioClient(ls_settings.label_studio_url, ls_settings.require_api_key()) as client:
        project = client.find_project(ls_settings.project_title)
        return list(client.iter_tasks(int(project["id"]), all_fields=True)), client, int(project["id"])


def test_round_predicts_ranks_and_makes_a_view(ls_settings, pushed):
    tasks, _, project_id = _tasks(ls_settings)
    # Label one task by hand first: the round must leave it out.
    with LabelStudioClient(ls_settings.label_studio_url, ls_settings.require_api_key()) as client:
        labelled = tasks[0]
        client.create_annotation(labelled["id"], [{"from_name": "transcription", "to_name": "audio", "type": "textarea", "value": {"text": ["hola"]}}])

    summary = run_round(ls_settings, budget=4)

    assert summary.served_version == "tiny-v1"
    assert summary.already_labelled == 1
    assert len(summary.ranked) == len(tasks) - 1
    tasks_after, client, _ = _tasks(ls_settings)
    by_id = {t["id"]: t for t in tasks_after}
    assert "priority" not in by_id[labelled["id"]]["data"]
    priorities = sorted(t["data"]["priority"] for t in tasks_after if t["id"] != labelled["id"])
    assert priorities == list(range(1, len(tasks)))
    for r in summary.ranked:
        predictions = [p for p in by_id[r.candidate.task_id]["predictions"] if p["model_version"] == "tiny-v1"]
        assert len(predictions) == 1
        # The prefill prediction's score orders Label Studio's label stream (uncertainty sampling) like
        # the round; the confidence is shown from the task data.
        assert predictions[0]["score"] == pytest.approx(label_order_score(r.priority, len(summary.ranked)))
        data = by_id[r.candidate.task_id]["data"]
        # Nothing is calibrated on one correction: the page says so, and shows the model's own confidence.
        assert data["confidence"] == (
            f"not calibrated yet (0 of the 200 corrected words needed); tiny-v1's own confidence {r.candidate.confidence:.2f}"
        )
        # The page's word checks are those of the version that prefills it.
        assert ("tiny-v1" in data["check_text"]) == bool(r.candidate.text.strip())
        assert predictions[0]["result"][0]["value"]["text"] == [r.candidate.text]
    with LabelStudioClient(ls_settings.label_studio_url, ls_settings.require_api_key()) as client:
        assert client.get_project(project_id)["sampling"] == SAMPLING_ROUND_ORDER

    # The view shows exactly the top 4, most useful first.
    with LabelStudioClient(ls_settings.label_studio_url, ls_settings.require_api_key()) as client:
        in_view = [t["id"] for t in client.iter_tasks(project_id, view_id=summary.view_id)]
        # The round's tab is not the only one: an unfiltered tab keeps every task reachable once the
        # round's are corrected (Label Studio drops its own "Default" tab when a project has any).
        all_views = [v for v in client.views(project_id) if (v.get("data") or {}).get("title") == "All tasks"]
        assert len(all_views) == 1
        in_all = [t["id"] for t in client.iter_tasks(project_id, view_id=int(all_views[0]["id"]))]
    assert in_view == [r.candidate.task_id for r in summary.ranked[:4]]
    assert sorted(in_all) == sorted(t["id"] for t in tasks)

    # The project now prefills from the served version (too few corrections to prefer Habla's transcript).
    assert summary.prefill is not None and summary.prefill.prefill == "tiny-v1" and summary.prefill.applied
    with LabelStudioClient(ls_settings.label_studio_url, ls_settings.require_api_key()) as client:
        assert client.get_project(project_id)["model_version"] == "tiny-v1"
    assert any(line.startswith("prefill: tiny-v1 --") for line in summary.lines())

    # A second round with the same model decodes nothing (the prediction cache), adds no duplicate
    # predictions and replaces the view.
    again = run_round(ls_settings, budget=2)
    assert summary.decoded == len(tasks) - 1 and again.decoded == 0
    assert again.predictions_created == 0
    tasks_again, _, _ = _tasks(ls_settings)
    assert all(sum(p["model_version"] == "tiny-v1" for p in t["predictions"]) <= 1 for t in tasks_again)
    with LabelStudioClient(ls_settings.label_studio_url, ls_settings.require_api_key()) as client:
        titles = [(v.get("data") or {}).get("title") for v in client.views(project_id)]
    assert titles.count("habla-ls: correct next") == 1 and titles.count("All tasks") == 1
    # Updated in place: the same tab (its id and place), now with the new budget.
    assert again.view_id == summary.view_id
    with LabelStudioClient(ls_settings.label_studio_url, ls_settings.require_api_key()) as client:
        in_view = [t["id"] for t in client.iter_tasks(project_id, view_id=again.view_id)]
    assert in_view == [r.candidate.task_id for r in again.ranked[:2]]


def test_round_uses_the_parent_model_for_disagreement(ls_settings, pushed, tiny_registry):
    from training.registry import set_current, update_card

    child = tiny_registry(ls_settings.models_dir, make_current=False)
    update_card(ls_settings.models_dir, child, parent="tiny-v1")
    set_current(ls_settings.models_dir, child)

    summary = run_round(ls_settings)

    assert summary.served_version == child and summary.reference_version == "tiny-v1"
    # Same weights: the two models agree everywhere.
    assert all(r.disagreement == 0.0 for r in summary.ranked)


def test_status_reports_counts_and_versions(ls_settings, ls_cli_env, pushed):
    result = CliRunner().invoke(cli, ["status", "--json"], env=ls_cli_env)
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    n = len(pushed.segments)
    assert status["counts"] == {"archived": n, "pushed": n, "annotated": 0}
    assert status["served_version"] == "tiny-v1"
    assert [v["version"] for v in status["versions"]] == ["tiny-v1"]


def test_round_without_a_model_says_what_to_do(ls_settings, ls_cli_env):
    result = CliRunner().invoke(cli, ["round"], env=ls_cli_env)
    assert result.exit_code != 0
    assert "habla-ls models bootstrap" in result.output


@pytest.mark.slow
def test_round_finish_pulls_trains_evaluates_and_applies_the_gate(ls_settings, ls_cli_env, make_recordings, tiny_registry, tmp_path):
    recordings = make_recordings(ls_settings.home.parent / f"rec-{ls_settings.home.name}", sessions=4, segments_per_session=3)
    tiny_registry(ls_settings.models_dir)
    push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=recordings.root, progress=False))
    tasks, _, _ = _tasks(ls_settings)
    with LabelStudioClient(ls_settings.label_studio_url, ls_settings.require_api_key()) as client:
        for task in tasks:
            text = recordings.references[task["data"]["ext_id"]]
            client.create_annotation(task["id"], [{"from_name": "transcription", "to_name": "audio", "type": "textarea", "value": {"text": [text]}}])
    train_config = tmp_path / "train.toml"
    train_config.write_text("max_steps = 1\nbatch_size = 4\nearly_stopping_patience = 0\n")

    result = CliRunner().invoke(cli, ["round", "--finish", "--train-config", str(train_config)], env=ls_cli_env)

    assert result.exit_code == 0, result.output
    assert (ls_settings.datasets_dir / "manifest.jsonl").read_text().count("\n") == len(tasks)
    from ml_backend.registry import list_versions, read_card, read_current

    assert list_versions(ls_settings.models_dir) == ["habla-v1", "tiny-v1"]
    card = read_card(ls_settings.models_dir / "habla-v1")
    assert card["parent"] == "tiny-v1" and card["test_wer_normalised"] is not None
    assert (ls_settings.reports_dir / "habla-v1.json").exists()
    # A random tiny model does not beat its parent by the margin: the gate keeps the served version.
    assert read_current(ls_settings.models_dir) == "tiny-v1"
    assert "not promoted" in result.output


def test_the_backend_answers_what_the_round_predicted_without_decoding(ls_settings, pushed, tmp_path):
    import httpx

    from tests.backend_process import BackendProcess

    summary = run_round(ls_settings, prefill=False)
    assert summary.decoded == len(pushed.segments)
    tasks, _, _ = _tasks(ls_settings)
    backend = BackendProcess(
        {"HABLA_LS_HOME": str(ls_settings.home), "HABLA_LS_DEVICE": "cpu"}, tmp_path / "backend.log"
    ).wait_ready()
    try:
        # As Label Studio would send them, minus the stored predictions: the cache must answer.
        asked = [{"id": t["id"], "data": t["data"]} for t in tasks]
        answer = httpx.post(backend.url + "/predict", json={"tasks": asked}, timeout=120).json()["results"]
        counts = httpx.get(backend.url + "/health").json()["predictions"]
    finally:
        backend.stop()
    assert counts["from_cache"] == len(tasks) and counts["decoded_clips"] == 0
    by_task = {r.candidate.task_id: r.candidate.text for r in summary.ranked}
    assert [a["result"][0]["value"]["text"][0] for a in answer] == [by_task[t["id"]] for t in tasks]
    assert all(a["model_version"] == "tiny-v1" for a in answer)
