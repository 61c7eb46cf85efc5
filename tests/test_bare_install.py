"""habla-ls installed with `pip install .` and no extras (no Label Studio server, no models, no synth), as
a user whose Label Studio runs elsewhere installs it: it pushes and pulls against a real Label Studio.

`make test` builds that install in `.venv-bare` and names it in HABLA_LS_BARE_VENV; without it the test is
skipped (and under `make test`, where HABLA_LS_REQUIRE_BROWSER is set too, it fails instead)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sync.labelling_config import transcription_result
from sync.ls_client import LabelStudioClient

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
BARE_ENV = "HABLA_LS_BARE_VENV"


@pytest.fixture(scope="module")
def bare_habla_ls() -> Path:
    venv = os.environ.get(BARE_ENV)
    if not venv:
        if os.environ.get("HABLA_LS_REQUIRE_BROWSER"):  # set by `make test`: there the install must exist
            pytest.fail(f"{BARE_ENV} is not set: `make bare-venv` builds the install this test needs")
        pytest.skip(f"{BARE_ENV} not set (`make bare-venv`, then HABLA_LS_BARE_VENV=.venv-bare)")
    executable = Path(venv).resolve() / "bin" / "habla-ls"
    assert executable.is_file(), f"{executable}: no habla-ls in the bare install"
    # Nothing beyond the base dependencies: the Label Studio server is not there.
    found = subprocess.run([str(executable.with_name("python")), "-c", "import label_studio"], capture_output=True)
    assert found.returncode != 0, "the bare install has Label Studio's server in it"
    return executable


def test_sync_push_and_pull_work_from_a_plain_install(bare_habla_ls, ls_cli_env, ls_settings, make_recordings, tmp_path):
    for command in (["sync", "push", "--help"], ["sync", "pull", "--help"]):
        shown = subprocess.run([str(bare_habla_ls), *command], capture_output=True, text=True, timeout=120)
        assert shown.returncode == 0 and "Usage:" in shown.stdout, shown.stderr
    recordings = make_recordings(sessions=2, segments_per_session=2, live_session=False)
    env = {**ls_cli_env, "HABLA_RECORDINGS": str(recordings.root)}
    env.pop("PYTHONPATH", None)
    pushed = subprocess.run([str(bare_habla_ls), "sync", "push"], env=env, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr
    with LabelStudioClient.for_project(ls_settings.label_studio_project()) as client:
        project = client.find_project(ls_settings.project_title)
        tasks = list(client.iter_tasks(int(project["id"]), all_fields=True))
        assert sorted(t["data"]["ext_id"] for t in tasks) == sorted(recordings.references)
        client.create_annotation(tasks[0]["id"], transcription_result("Abrid el libro por favor."))
    pulled = subprocess.run([str(bare_habla_ls), "sync", "pull"], env=env, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert pulled.returncode == 0, pulled.stderr
    rows = [json.loads(line) for line in (ls_settings.datasets_dir / "manifest.jsonl").read_text().splitlines()]
    assert [(r["segment_key"], r["transcript"]) for r in rows] == [(tasks[0]["data"]["ext_id"], "Abrid el libro por favor.")]
