"""The prefill follows the evidence; the prediction cache decodes each clip once per model version.

The decision rules on hand-made evidence, the cache on a real SQLite file (and a second process), and
the whole loop against a real Label Studio with the tiny Whisper: round, promote, rollback, status.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from habla_ls.corrections import CorrectedTask
from habla_ls.prefill import (
    PrefillDecision,
    decide,
    describe,
    describe_decision,
    load,
    min_tasks_setting,
    prefill_path,
    save,
)
from ml_backend.prediction_cache import CachedPrediction, PredictionCache, cache_path, model_fingerprint

pytestmark = pytest.mark.usefixtures("tiny_decoding")  # decoding runs a random tiny Whisper here

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _task(i: int, reference: str, **predictions: str) -> CorrectedTask:
    return CorrectedTask(i, "", reference, T0, {k.replace("_", "-"): v for k, v in predictions.items()})


# ------------------------------------------------------------------------------------------ decision


def test_too_few_common_tasks_keep_the_served_version():
    tasks = [_task(i, "abrid el libro", habla_ground_truth="abrid el libro", tiny_v2="nada que ver") for i in range(4)]
    decision = decide(tasks, "tiny-v2", min_tasks=5)
    assert decision.prefill == "tiny-v2"
    assert "only 4 corrected task(s)" in decision.reason and "5 needed" in decision.reason
    by = {s.source: s for s in decision.sources}
    assert by["habla-ground-truth"].wer == 0.0 and by["tiny-v2"].wer == 1.0 and by["tiny-v2"].kind == "served"


def test_habla_wins_on_enough_common_tasks_and_loses_when_worse():
    better_habla = [_task(i, "abrid el libro", habla_ground_truth="abrid el libro", tiny_v2="abrid libro") for i in range(5)]
    decision = decide(better_habla, "tiny-v2", min_tasks=5)
    assert decision.prefill == "habla-ground-truth"
    comparison = decision.comparisons[0]
    assert (comparison.tasks, comparison.wer, comparison.served_wer) == (5, 0.0, pytest.approx(1 / 3, abs=1e-3))

    worse_habla = [_task(i, "abrid el libro", habla_ground_truth="abrid", tiny_v2="abrid el libro") for i in range(5)]
    assert decide(worse_habla, "tiny-v2", min_tasks=5).prefill == "tiny-v2"
    tie = [_task(i, "abrid el libro", habla_ground_truth="abrid el libro", tiny_v2="Abrid el libro.") for i in range(5)]
    assert decide(tie, "tiny-v2", min_tasks=5).prefill == "tiny-v2"  # normalised WER: a tie keeps the model


def test_sources_are_compared_on_the_same_tasks_only():
    # The served model predicted only the hard clips (wrong), Habla every clip: over all its tasks Habla
    # looks worse than it is on the hard ones... what counts is the common subset.
    hard = [_task(i, "uno dos tres cuatro", habla_ground_truth="uno dos", tiny_v2="uno dos tres") for i in range(5)]
    easy = [_task(10 + i, "hola", habla_ground_truth="hola") for i in range(20)]
    decision = decide(hard + easy, "tiny-v2", min_tasks=5)
    assert decision.comparisons[0].tasks == 5
    assert decision.prefill == "tiny-v2"  # 0.25 vs 0.5 on the same five clips
    by = {s.source: s for s in decision.sources}
    assert by["habla-ground-truth"].tasks == 25 and by["habla-ground-truth"].wer < 0.5  # all its tasks: looks good


def test_a_source_with_no_task_in_common_says_so():
    # Just after a promotion: the new version predicted none of the corrected tasks before they were corrected.
    tasks = [_task(i, "la pizarra", habla_ground_truth="la", tiny_v1="la pizarra") for i in range(6)]
    decision = decide(tasks, "tiny-v2", min_tasks=5, versions=["tiny-v1", "tiny-v2"])
    assert decision.prefill == "tiny-v2"
    row = next(line for line in describe_decision(decision) if "habla-ground-truth" in line)
    assert row.endswith("no task with predictions of both") and " on 0" not in row


def test_earlier_versions_are_listed_but_do_not_prefill():
    tasks = [_task(i, "la pizarra", habla_ground_truth="la", tiny_v1="la pizarra", tiny_v2="pizarra") for i in range(6)]
    decision = decide(tasks, "tiny-v2", min_tasks=5, versions=["tiny-v1", "tiny-v2"])
    assert decision.prefill == "tiny-v2"
    assert {s.source: s.kind for s in decision.sources}["tiny-v1"] == "earlier version"


def test_min_tasks_setting_from_the_environment():
    assert min_tasks_setting({}) == 10
    assert min_tasks_setting({"HABLA_LS_PREFILL_MIN_TASKS": "3"}) == 3
    from habla_ls.config import ConfigError

    with pytest.raises(ConfigError, match="HABLA_LS_PREFILL_MIN_TASKS"):
        min_tasks_setting({"HABLA_LS_PREFILL_MIN_TASKS": "many"})


def test_decision_is_saved_atomically_and_described(tmp_path):
    from habla_ls.config import load_settings

    decision = decide([_task(i, "hola", habla_ground_truth="hola", tiny_v1="adiós") for i in range(3)], "tiny-v1", min_tasks=2)
    decision.applied = True
    save(tmp_path, decision)
    assert load(tmp_path) == decision
    assert not [p for p in tmp_path.iterdir() if p.name != "prefill.json"]  # no temp file left behind
    lines = describe(load_settings(environ={}, home=str(tmp_path)))
    assert lines[0].startswith("prefill: habla-ground-truth --")
    row = next(line for line in lines if line.startswith("* habla-ground-truth"))
    assert row.split()[2:5] == ["habla", "3", "0.000"] and row.endswith("0.000 vs 1.000 on 3")
    prefill_path(tmp_path).write_text("{ torn")
    assert load(tmp_path) is None


# ------------------------------------------------------------------------------------------ the cache


def test_cache_persists_and_a_new_fingerprint_is_a_miss(tmp_path):
    path = cache_path(tmp_path)
    cache = PredictionCache(path)
    cache.put_many("tiny-v1", "w1", [("a" * 64, CachedPrediction("hola", 0.5, {"audio_seconds": 1.0}))])
    cache.close()

    again = PredictionCache(path)
    assert again.get("a" * 64, "tiny-v1", "w1") == CachedPrediction("hola", 0.5, {"audio_seconds": 1.0})
    assert again.get("a" * 64, "tiny-v2", "w1") is None  # another version
    assert again.get("a" * 64, "tiny-v1", "w2") is None  # same name, other weights
    assert len(again) == 1


def test_many_keys_are_read_in_chunks_and_vectors_keep_their_fingerprint(tmp_path):
    cache = PredictionCache(cache_path(tmp_path), memory_rows=0)  # every read goes to SQLite
    shas = [f"{i:064d}" for i in range(1_203)]  # past two chunks of the IN (...) list
    cache.put_many("v", "f", [(sha, CachedPrediction(f"t{i}", None)) for i, sha in enumerate(shas)])
    found = cache.get_many([*shas, "f" * 64], "v", "f")
    assert len(found) == 1_203 and found[shas[1_202]].text == "t1202"
    cache.put_embeddings("v", "f", [(shas[0], np.array([0.5, -2.0])), (shas[1], np.array([1.0, 0.0]))])
    vectors = cache.get_embeddings(shas[:3], "v", "f")
    assert sorted(vectors) == shas[:2] and vectors[shas[0]].tolist() == [0.5, -2.0]
    cache.put_embeddings("v", "g", [(shas[1], np.array([3.0, 3.0]))])  # other weights under the same name
    assert list(cache.get_embeddings(shas[:3], "v", "f")) == [shas[0]]
    assert cache.get_embeddings(shas[:3], "v", "g")[shas[1]].tolist() == [3.0, 3.0]


def test_a_damaged_cache_file_is_set_aside(tmp_path):
    path = cache_path(tmp_path)
    path.write_bytes(b"this is not a database" * 100)
    cache = PredictionCache(path)
    assert cache.get("b" * 64, "v", "f") is None
    cache.put("b" * 64, "v", "f", CachedPrediction("ok", None))
    assert PredictionCache(path).get("b" * 64, "v", "f") == CachedPrediction("ok", None)
    assert any(p.name.startswith(path.name + ".damaged-") for p in tmp_path.iterdir())


def test_one_writer_process_and_concurrent_readers(tmp_path):
    path = cache_path(tmp_path)
    PredictionCache(path).put("0" * 64, "v", "f", CachedPrediction("primero", 0.1))
    writer = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; from ml_backend.prediction_cache import *\n"
            f"c = PredictionCache({str(path)!r})\n"
            "for i in range(300): c.put(f'{i:064d}', 'v', 'f', CachedPrediction(f't{i}', i / 300))\n"
        )],
    )
    reader = PredictionCache(path)
    while writer.poll() is None:
        assert reader.get("0" * 64, "v", "f") is not None
        reader.get_many([f"{i:064d}" for i in range(300)], "v", "f")
    assert writer.returncode == 0
    assert len(PredictionCache(path).get_many([f"{i:064d}" for i in range(300)], "v", "f")) == 300


def test_model_fingerprint_changes_with_the_weights(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"1234")
    before = model_fingerprint(tmp_path)
    (tmp_path / "model.bin").write_bytes(b"12345")
    assert model_fingerprint(tmp_path) != before
    assert model_fingerprint(tmp_path / "nothing") == "unknown"


# ------------------------------------------------------------------------------------------ with Label Studio

labelstudio = pytest.mark.labelstudio


@pytest.fixture
def pushed(ls_settings, make_recordings, tiny_registry):
    from sync.push import PushOptions, push

    recordings = make_recordings(
        ls_settings.home.parent / f"rec-{ls_settings.home.name}", sessions=3, segments_per_session=5, live_session=False
    )
    tiny_registry(ls_settings.models_dir)
    summary = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=recordings.root, progress=False))
    assert summary.new == 15
    return recordings


def _client(ls_settings):
    from sync.ls_client import LabelStudioClient

    return LabelStudioClient(ls_settings.label_studio_url, ls_settings.require_api_key())


def _project(client, ls_settings) -> dict:
    return client.get_project(int(client.find_project(ls_settings.project_title)["id"]))


def _correct(client, task: dict, text: str) -> None:
    from sync.labelling_config import transcription_result

    client.create_annotation(task["id"], transcription_result(text))


@labelstudio
def test_promote_then_round_prefills_every_unlabelled_task_with_the_served_version(
    ls_settings, ls_cli_env, pushed, tiny_registry
):
    from habla_ls.round import run_round

    first = run_round(ls_settings)
    assert first.prefill is not None and first.prefill.prefill == "tiny-v1" and first.prefill.applied
    assert "no human corrections yet" in first.prefill.reason
    with _client(ls_settings) as client:
        project = _project(client, ls_settings)
        assert project["model_version"] == "tiny-v1"
        tasks = list(client.iter_tasks(project["id"], all_fields=True))
        _correct(client, tasks[0], pushed.references[tasks[0]["data"]["ext_id"]])

    second = tiny_registry(ls_settings.models_dir, make_current=False)
    runner = CliRunner()
    result = runner.invoke(cli, ["models", "promote", second, "--force", "--no-evaluate"], env=ls_cli_env)
    assert result.exit_code == 0, result.output
    assert f"predictions of {second}: 14 unlabelled task(s) lacked one; 14 stored" in result.output
    assert f"prefill: {second} --" in result.output

    with _client(ls_settings) as client:
        project = _project(client, ls_settings)
        assert project["model_version"] == second
        tasks = list(client.iter_tasks(project["id"], all_fields=True))
        unlabelled = [t for t in tasks if not t["annotations"]]
        assert len(unlabelled) == 14
        for task in unlabelled:
            assert [p["model_version"] for p in task["predictions"]].count(second) == 1, task["id"]
            # The page's confidence line and word checks are those of the version that now prefills, not
            # the round's old one.
            assert f"{second}'s own confidence" in task["data"]["confidence"], task["data"]["confidence"]
            assert "tiny-v1" not in task["data"]["check_text"] + task["data"]["confidence"]
        labelled = next(t for t in tasks if t["annotations"])
        assert second not in [p["model_version"] for p in labelled["predictions"]]

    # The round after the promotion finds every clip in the prediction cache: nothing is decoded again.
    again = run_round(ls_settings)
    assert (again.predicted, again.decoded, again.predictions_created) == (14, 0, 0)

    result = runner.invoke(cli, ["models", "rollback"], env=ls_cli_env)
    assert result.exit_code == 0, result.output
    assert "predictions of tiny-v1: 0 unlabelled task(s) lacked one" in result.output
    with _client(ls_settings) as client:
        project = _project(client, ls_settings)
        assert project["model_version"] == "tiny-v1"
        # Rolled back, the page's checks are tiny-v1's again.
        for task in client.iter_tasks(project["id"], all_fields=True):
            if not task["annotations"]:
                assert "tiny-v1's own confidence" in task["data"]["confidence"], task["data"]["confidence"]

    status = runner.invoke(cli, ["status"], env=ls_cli_env)
    assert status.exit_code == 0, status.output
    assert "prefill: tiny-v1 -- the served tiny-v1 prefills by default: only 1 corrected task(s)" in status.output
    assert "* tiny-v1" in status.output and "habla-ground-truth" in status.output
    data = json.loads(runner.invoke(cli, ["status", "--json"], env=ls_cli_env).output)
    by = {s["source"]: s for s in data["prefill"]["sources"]}
    assert by["habla-ground-truth"]["tasks"] == 1 and by["habla-ground-truth"]["wer"] == 0.0
    assert by["tiny-v1"]["tasks"] == 1 and second not in by  # it never predicted the corrected task


@labelstudio
def test_enough_corrections_where_habla_is_better_move_the_prefill_to_habla(ls_settings, ls_cli_env, pushed):
    from habla_ls.prefill import refresh
    from habla_ls.round import run_round
    from sync.labelling_config import transcription_result

    run_round(ls_settings)  # tiny-v1 predictions on every task, made before any correction
    with _client(ls_settings) as client:
        project_id = _project(client, ls_settings)["id"]
        tasks = list(client.iter_tasks(project_id, all_fields=True))
        corrected = tasks[:11]
        for task in corrected:
            _correct(client, task, pushed.references[task["data"]["ext_id"]])
        # Made after the corrections: a perfect "tiny-v1" transcript must not count for tiny-v1.
        client.create_predictions(project_id, [
            {"task": t["id"], "model_version": "tiny-v1", "score": 1.0,
             "result": transcription_result(pushed.references[t["data"]["ext_id"]])}
            for t in corrected
        ])

    decision = refresh(ls_settings)

    assert decision.prefill == "habla-ground-truth" and decision.applied
    comparison = decision.comparisons[0]
    assert comparison.tasks == 11 and comparison.wer == 0.0 and comparison.served_wer > 0.5
    with _client(ls_settings) as client:
        assert _project(client, ls_settings)["model_version"] == "habla-ground-truth"

    # A smaller threshold than the evidence changes nothing; a larger one returns to the served version.
    env = dict(ls_cli_env, HABLA_LS_PREFILL_MIN_TASKS="12")
    result = CliRunner().invoke(cli, ["status", "--refresh-prefill"], env=env)
    assert result.exit_code == 0, result.output
    assert "prefill: tiny-v1 --" in result.output and "11 corrected task(s)" in result.output
    with _client(ls_settings) as client:
        assert _project(client, ls_settings)["model_version"] == "tiny-v1"


@labelstudio
def test_without_label_studio_promote_says_so_in_one_line(ls_settings, ls_cli_env, tiny_registry):
    tiny_registry(ls_settings.models_dir)
    second = tiny_registry(ls_settings.models_dir, make_current=False)
    env = dict(ls_cli_env, LABEL_STUDIO_URL="http://127.0.0.1:9")  # nothing listens there
    result = CliRunner().invoke(cli, ["models", "promote", second, "--force", "--no-evaluate"], env=env)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("prefill:")]
    assert len(lines) == 1 and "unreachable" in lines[0]
    assert isinstance(PrefillDecision, type) and load(ls_settings.home) is None
