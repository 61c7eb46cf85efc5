"""What the labelling page points the annotator at, in a real headless Chromium against a real Label Studio.

The served model is the real whisper-base (its word probabilities mean something), the clips are espeak-ng
reading Andalusian respellings (so it mishears words), one of them a quiet student at -20 dB:

- a task whose prefilled transcript has a wrong word shows that word marked, and its row plays the stretch;
- the quiet clip's waveform is drawn at a visible height (the page plays a louder copy and says by how much);
- a page with nothing marked opens like any other;
- promoting another version moves the marks to that version's words.

Screenshots go to test-artifacts/browser/ (10-word-checks, 11-quiet-clip, 13-nothing-marked, 14-no-model-words, 12-after-promote).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from habla_ls.word_marks import REPORT_FILE
from ml_backend.loading import locate_model
from ml_backend.prediction_cache import WORDS_META, PredictionCache, cache_path, model_fingerprint
from ml_backend.registry import CT2_SUBDIR
from sync.labelling_config import (
    DATA_CHECK_TEXT,
    DATA_CHECK_WORDS,
    DATA_EXT_ID,
    DATA_LOUDNESS,
    DATA_SHA256,
    EMPTY_CHECKS,
)
from sync.ls_client import LabelStudioClient
from sync.page_checks import page_checks, words_from_meta
from synth.accent import spelt_as_heard
from tests.browser_helpers import artifact, chromium_page, chromium_path, log_in, screenshot_on_failure
from training.word_checks import fallback_scores, page_threshold, wrong_words

pytestmark = [pytest.mark.labelstudio, pytest.mark.browser, pytest.mark.slow, pytest.mark.quality]

SENTENCES = (
    "Hoy vamos a estudiar los verbos irregulares del pasado.",
    "Los niños de la segunda fila están muy callados.",
    "Mañana tenemos un examen de matemáticas.",
)
TINY_DECODING = {"HABLA_LS_TEMPERATURES": "0", "HABLA_LS_MAX_NEW_TOKENS": "12"}


def _register_ct2(models_dir, name: str, ct2_dir) -> str:
    from training.registry import new_version, set_current, write_card

    with new_version(models_dir, name) as (version, staging):
        shutil.copytree(ct2_dir, staging / CT2_SUBDIR)
        write_card(staging, {"version": version, "name": name, "parent": None, "base_model": name})
    set_current(models_dir, version, reason="test")
    return version


@pytest.fixture
def checked_project(ls_settings, ls_cli_env, make_recordings, whisper_base_ct2_dir, tiny_registry):
    chromium_path()
    recordings = make_recordings(
        sentences=SENTENCES, sessions=1, segments_per_session=3, speakers=("profesora", "alumna"),
        quiet_speakers=("alumna",), text_rewrite=spelt_as_heard, live_session=False,
    )
    base = _register_ct2(ls_settings.models_dir, "whisper-base", whisper_base_ct2_dir)
    other = tiny_registry(ls_settings.models_dir, make_current=False)
    env = {**ls_cli_env, "HABLA_RECORDINGS": str(recordings.root)}
    for args in (["sync", "push"], ["round", "--budget", "3"]):
        result = CliRunner().invoke(cli, args, env=env)
        assert result.exit_code == 0, result.output
    return recordings, base, other, env


def _words(ls_settings, version: str, sha: str):
    _, load_dir = locate_model(ls_settings.models_dir / version)
    cache = PredictionCache(cache_path(ls_settings.home))
    try:
        found = cache.get_many([sha], version, model_fingerprint(load_dir))
    finally:
        cache.close()
    return words_from_meta(found[sha].meta[WORDS_META])


def _waveform_height(page) -> float:
    """The share of the waveform's canvas height that its drawn samples span (its darkest pixels)."""
    canvas = page.locator(".lsf-audio-tag canvas, [class*='waveform'] canvas").first
    image = np.frombuffer(canvas.screenshot(type="png"), dtype=np.uint8)
    import io

    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(image.tobytes())).convert("L"), dtype=np.float32)
    drawn = pixels < 160  # the waveform is drawn dark on a light background
    rows = np.flatnonzero(drawn.mean(axis=1) > 0.01)
    return 0.0 if rows.size == 0 else (rows[-1] - rows[0] + 1) / pixels.shape[0]


def test_the_page_marks_doubtful_words_plays_quiet_clips_louder_and_follows_promotion(
    checked_project, label_studio, ls_settings
) -> None:
    from playwright.sync_api import expect

    recordings, base, other, env = checked_project
    references = recordings.references
    quiet_key = next(s.key for s in recordings.segments if s.speaker == "alumna")
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        project_id = int(client.find_project(ls_settings.project_title)["id"])
        tasks = {t["data"][DATA_EXT_ID]: t for t in client.iter_tasks(project_id, all_fields=True)}

    # Which task has a wrong word the page must mark: whisper-base's own words and probabilities (with no
    # correction yet, the page marks the quarter of the next tasks' words the model itself doubts most; all
    # three tasks are within the look-ahead).
    words_of = {key: _words(ls_settings, base, task["data"][DATA_SHA256]) for key, task in tasks.items()}
    threshold = page_threshold([d for words in words_of.values() for d in fallback_scores([w.probability for w in words])])
    saved = json.loads((ls_settings.reports_dir / REPORT_FILE).read_text())["page"]
    assert saved["version"] == base and saved["threshold"] == pytest.approx(threshold, abs=1e-4)
    marked_wrong = {}
    for key, words in words_of.items():
        doubt = fallback_scores([w.probability for w in words])
        wrong = wrong_words([w.text for w in words], references[key])
        hits = [w.text.strip() for w, d, bad in zip(words, doubt, wrong, strict=True) if bad and d >= threshold]
        if hits:
            marked_wrong[key] = (words, hits)
    assert marked_wrong, "whisper-base made no doubtful mistake on these clips: the test cannot check the marks"
    key, (words, hits) = next(iter(marked_wrong.items()))
    task = tasks[key]
    expected_marks = [w.text.strip() for w, d in zip(words, fallback_scores([w.probability for w in words]), strict=True)
                      if d >= threshold]

    with chromium_page() as page, screenshot_on_failure(page, "failure-word-checks.png"):
        log_in(page, label_studio.url, label_studio.credentials.username, label_studio.credentials.password)
        page.goto(f"{label_studio.url}/projects/{project_id}/data?task={task['id']}")
        marks = page.locator(".hl-checks mark")
        # Waits: Label Studio may render the task's view again once its annotations load.
        expect(marks).to_have_text(expected_marks)
        assert set(hits) <= set(expected_marks)
        expect(page.locator(".hl-checks")).to_contain_text(f"Words to check ({base})")
        # One playable row per marked stretch; its play button moves the audio to the stretch.
        rows = task["data"][DATA_CHECK_WORDS]
        assert rows and rows[0]["author"].split()[0] == expected_marks[0]
        # Each row's play button sits beside it; it is enabled once the audio is loaded.
        play = page.locator("button[aria-label='play']").first
        expect(play).to_be_enabled()
        play.click()
        page.wait_for_function(
            "() => [...document.querySelectorAll('audio')].some(a => a.currentTime > 0)", timeout=15_000
        )
        position = page.evaluate("() => Math.max(...[...document.querySelectorAll('audio')].map(a => a.currentTime))")
        assert rows[0]["start"] - 0.05 <= position <= rows[0]["end"] + 1.0
        page.screenshot(path=str(artifact("10-word-checks.png")), full_page=True)

        # The quiet student: drawn as high as the teacher, played louder, and the page says so.
        loud_height = _waveform_height(page)
        quiet = tasks[quiet_key]
        assert "louder" in quiet["data"][DATA_LOUDNESS]
        assert ".listen.wav" in quiet["data"]["audio"]
        page.goto(f"{label_studio.url}/projects/{project_id}/data?task={quiet['id']}")
        expect(page.locator(".hl-loudness h4")).to_have_text(quiet["data"][DATA_LOUDNESS])
        page.wait_for_timeout(1500)  # the waveform is drawn after the audio is decoded
        quiet_height = _waveform_height(page)
        page.screenshot(path=str(artifact("11-quiet-clip.png")), full_page=True)
        assert quiet_height >= 0.3 and quiet_height >= 0.5 * loud_height, (quiet_height, loud_height)

        # A page with nothing to mark still opens (Label Studio's Paragraphs shows a blank view for an empty
        # list of rows; the one empty row that stands for none is hidden).
        calm = next(t for k, t in tasks.items() if k not in (key, quiet_key))
        calm_words = words_of[next(k for k, t in tasks.items() if t is calm)]
        with LabelStudioClient(label_studio.url, label_studio.token) as client:
            client.patch_task_data(int(calm["id"]), {**calm["data"], **page_checks(
                calm_words, [0.0] * len(calm_words), threshold, base, "about 0.0 of 0 words")})
        page.goto(f"{label_studio.url}/projects/{project_id}/data?task={calm['id']}")
        expect(page.locator(".hl-checks")).to_contain_text(f"Nothing to check marked ({base})")
        expect(page.locator("textarea").first).to_be_visible()
        expect(page.locator("[data-testid='phrases-wrapper'] button[aria-label='play']")).to_be_hidden()
        page.screenshot(path=str(artifact("13-nothing-marked.png")), full_page=True)
        # And a page without model words at all, as when Habla's transcript prefills.
        with LabelStudioClient(label_studio.url, label_studio.token) as client:
            client.patch_task_data(int(quiet["id"]), {**quiet["data"], **EMPTY_CHECKS})
        page.goto(f"{label_studio.url}/projects/{project_id}/data?task={quiet['id']}")
        expect(page.locator("textarea").first).to_be_visible()
        expect(page.locator("[data-testid='phrases-wrapper'] button[aria-label='play']")).to_be_hidden()
        page.wait_for_timeout(1500)  # the waveform is drawn after the audio is decoded
        page.screenshot(path=str(artifact("14-no-model-words.png")), full_page=True)

        # A promotion: the unlabelled tasks get the new version's predictions, and the marks follow.
        result = CliRunner().invoke(cli, ["models", "promote", other, "--force", "--no-evaluate"], env={**env, **TINY_DECODING})
        assert result.exit_code == 0, result.output
        with LabelStudioClient(label_studio.url, label_studio.token) as client:
            after = client.get_task(int(task["id"]))["data"]
        assert base not in after[DATA_CHECK_TEXT] and base not in after["confidence"]
        assert after[DATA_CHECK_TEXT] != task["data"][DATA_CHECK_TEXT]
        tiny_words = _words(ls_settings, other, task["data"][DATA_SHA256])
        if tiny_words:
            assert other in after[DATA_CHECK_TEXT]
        page.goto(f"{label_studio.url}/projects/{project_id}/data?task={task['id']}")
        expect(page.locator(".hl-confidence h4")).to_contain_text(other)
        page.screenshot(path=str(artifact("12-after-promote.png")), full_page=True)
