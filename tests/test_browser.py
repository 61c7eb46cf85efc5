"""The labelling page as a person uses it: a real headless Chromium against a real Label Studio.

One teacher's loop, end to end: push Habla's recordings, run a round with the served model (the tiny
Whisper: its transcripts differ from Habla's, so a page prefilled with Habla's text cannot pass), open
the round's view in the Data Manager, press "Label All Tasks", and check what the page shows: the task
the round ranked first, prefilled with the served version's prediction, with its audio loaded (the
duration shows), its context (session, speaker, time, Habla's translation) and the served model's
confidence. Then type a correction and submit, flag the next clip as noise with its hotkey and submit
with Ctrl+Enter, skip the third with Ctrl+Space; ``sync pull --write-habla`` must give exactly the typed
text in the manifest and in Habla's corrected_ground_truth.json.

Screenshots go to test-artifacts/browser/ (01-round-view, 02-labelling-page, 03-corrected,
04-flagged-noise; failure.png when a step fails).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from habla_ls.round import DEFAULT_VIEW_TITLE
from ml_backend.registry import read_current
from sync.habla import CORRECTED_FILE
from sync.labelling_config import (
    DATA_CONFIDENCE,
    DATA_DURATION,
    DATA_EXT_ID,
    DATA_PRIORITY,
    DATA_RECORDED_AT,
    DATA_SEGMENT,
    DATA_SESSION,
    DATA_SPEAKER,
    DATA_TRANSLATION,
    FLAG_HOTKEYS,
    FLAGS_NAME,
    NOISE,
    TRANSCRIPTION_NAME,
    read_result,
)
from sync.ls_client import LabelStudioClient
from sync.push import PushOptions, push
from tests.browser_helpers import (
    add_translations,
    artifact,
    chromium_page,
    chromium_path,
    log_in,
    next_task_after,
    screenshot_on_failure,
    submit_and_next,
    time_box_seconds,
)

pytestmark = [pytest.mark.labelstudio, pytest.mark.browser, pytest.mark.slow]

TYPED = "Cerrad la ventana, que entra mucho ruido de fuera."
BUDGET = 3
# A random tiny Whisper babbles: greedy decoding only and a short cap keep the round fast and repeatable;
# one clip per window, because packed into one window most of its transcripts come out empty, and an
# empty prefill would prove nothing.
DECODING_ENV = {"HABLA_LS_TEMPERATURES": "0", "HABLA_LS_MAX_NEW_TOKENS": "12", "HABLA_LS_PACK": "0"}


@pytest.fixture
def ranked_project(ls_settings, ls_cli_env, make_recordings, tiny_registry):
    """Six Habla segments pushed (one without a translation) and ranked by a round of the tiny Whisper."""
    chromium_path()  # skip (or fail under `make test`) before any work when there is no browser
    recordings = make_recordings(sessions=2, segments_per_session=3, live_session=False)
    add_translations(recordings, leave_out={recordings.segments[-1].key})
    tiny_registry(ls_settings.models_dir)
    pushed = push(ls_settings.label_studio_project(), ls_settings.work_paths(), PushOptions(recordings=recordings.root, progress=False))
    assert pushed.new == len(recordings.segments)
    result = CliRunner().invoke(cli, ["round", "--budget", str(BUDGET)], env={**ls_cli_env, **DECODING_ENV})
    assert result.exit_code == 0, result.output
    return recordings, pushed.project_id


def _served_text(task: dict, version: str) -> str:
    (prediction,) = [p for p in task["predictions"] if p["model_version"] == version]
    return read_result(prediction["result"])[0]


def _expect_task_page(page, task: dict, served: str, habla_text: str) -> None:
    """The open task is ``task``: its context, confidence, audio and the served version's prefill."""
    from playwright.sync_api import expect

    data = task["data"]
    textarea = page.locator(f'textarea[name^="{TRANSCRIPTION_NAME}"]')
    served_text = _served_text(task, served)
    # Without this the check below could not tell the two prefills apart.
    assert served_text.strip() and served_text.strip() != habla_text.strip(), (
        f"task {task['id']}: the served prediction {served_text!r} cannot tell the prefill from Habla's"
    )
    expect(textarea).to_have_value(served_text)

    expect(page.locator(".hl-session h4")).to_have_text(data[DATA_SESSION])
    expect(page.locator(".hl-segment h4")).to_have_text(data[DATA_SEGMENT])
    expect(page.locator(".hl-speaker h4")).to_have_text(data[DATA_SPEAKER])
    expect(page.locator(".hl-recorded h4")).to_have_text(data[DATA_RECORDED_AT])
    if data[DATA_TRANSLATION]:
        expect(page.locator(".hl-translation h4")).to_have_text(data[DATA_TRANSLATION])
    else:
        expect(page.locator(".hl-translation")).to_be_hidden()
    assert served in data[DATA_CONFIDENCE], f"task {task['id']}: the round left no confidence of {served}"
    expect(page.locator(".hl-confidence h4")).to_have_text(data[DATA_CONFIDENCE])

    # The audio loaded: the player knows its duration (0 until the file is fetched and decoded).
    duration = page.locator(".lsf-timer-duration-control input[readonly]")
    expect(duration).not_to_have_value("00:00:00:000")
    assert time_box_seconds(duration.input_value()) == pytest.approx(data[DATA_DURATION], abs=0.02)


def test_the_label_stream_follows_the_round_and_the_corrections_reach_habla(
    ranked_project, label_studio, ls_settings, ls_cli_env
) -> None:
    from playwright.sync_api import expect

    recordings, project_id = ranked_project
    served = read_current(ls_settings.models_dir)
    habla_text = {s.key: s.spoken for s in recordings.segments}  # Habla's ground truth is what was spoken
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        (view,) = [v for v in client.views(project_id) if (v.get("data") or {}).get("title") == DEFAULT_VIEW_TITLE]
        queue = list(client.iter_tasks(project_id, view_id=int(view["id"]), all_fields=True))
        tasks = {t["id"]: t for t in client.iter_tasks(project_id, all_fields=True)}
    assert [t["data"][DATA_PRIORITY] for t in queue] == list(range(1, BUDGET + 1))
    first, second, third = queue

    def check(page, opened: dict, expected: dict) -> None:
        # What the page shows is checked first, on whichever task opened, so that a wrong prefill and a
        # wrong order each fail with their own message.
        task = tasks[opened["id"]]
        _expect_task_page(page, task, served, habla_text[task["data"][DATA_EXT_ID]])
        assert opened["id"] == expected["id"], (
            f"the label stream opened task {opened['id']} (priority {task['data'].get(DATA_PRIORITY)}), "
            f"not task {expected['id']} (priority {expected['data'][DATA_PRIORITY]})"
        )

    with chromium_page() as page, screenshot_on_failure(page, "failure.png"):
        log_in(page, label_studio.url, label_studio.credentials.username, label_studio.credentials.password)
        page.goto(f"{label_studio.url}/projects/{project_id}/data?tab={view['id']}")
        label_all = page.get_by_role("button", name="Label All Tasks")
        expect(page.get_by_role("checkbox", name=f"Select Task {first['id']}")).to_be_visible()
        # Beside the round's tab, one with every task: reachable once the round's are all corrected.
        expect(page.get_by_text("All tasks", exact=True)).to_be_visible()
        page.screenshot(path=str(artifact("01-round-view.png")))

        opened = next_task_after(page, label_all.click)
        check(page, opened, first)
        page.screenshot(path=str(artifact("02-labelling-page.png")))

        textarea = page.locator(f'textarea[name^="{TRANSCRIPTION_NAME}"]')
        textarea.fill("")
        textarea.press_sequentially(TYPED)
        textarea.press("Enter")  # what a person does at the end of a line: the TextArea keeps the newline
        expect(textarea).to_have_value(TYPED + "\n")
        page.screenshot(path=str(artifact("03-corrected.png")))
        annotation, opened = submit_and_next(page, page.get_by_test_id("bottombar-submit-button").click)
        assert read_result(annotation["result"]) == (TYPED, ())
        assert opened is not None, "the label stream ended after one task"
        check(page, opened, second)

        # Hotkeys act once the focus leaves the text box, which has it when a task opens.
        page.locator(".hl-context").click()
        page.keyboard.press(FLAG_HOTKEYS[NOISE])
        expect(page.locator(f'input[name="{NOISE}"]')).to_be_checked()
        page.screenshot(path=str(artifact("04-flagged-noise.png")))
        annotation, opened = submit_and_next(page, lambda: page.keyboard.press("Control+Enter"))
        assert any(r["from_name"] == FLAGS_NAME and r["value"]["choices"] == [NOISE] for r in annotation["result"])
        assert opened is not None, "the label stream ended after two tasks"
        check(page, opened, third)

        page.locator(".hl-context").click()
        annotation, _ = submit_and_next(page, lambda: page.keyboard.press("Control+Space"))
        assert annotation["was_cancelled"] is True

    result = CliRunner().invoke(cli, ["sync", "pull", "--write-habla"], env=ls_cli_env)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (ls_settings.datasets_dir / "manifest.jsonl").read_text().splitlines()]
    first_key, second_key, third_key = (t["data"][DATA_EXT_ID] for t in queue)
    assert {r["segment_key"]: r["transcript"] for r in rows} == {first_key: TYPED}
    assert f"left out 1: marked {NOISE}" in result.output and "left out 1: skipped or cancelled" in result.output

    session, filename = first_key.split("/")
    corrected = json.loads((recordings.root / session / CORRECTED_FILE).read_text(encoding="utf-8"))
    (entry,) = [e for e in corrected["segments"] if e["filename"] == filename]
    assert entry["transcript"] == TYPED and entry["human_corrected"] is True
    written = {f"{session}/{e['filename']}" for e in corrected["segments"] if e.get("human_corrected")}
    assert second_key not in written and third_key not in written
