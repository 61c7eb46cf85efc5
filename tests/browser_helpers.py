"""Driving Label Studio's labelling page in a real headless Chromium (Playwright for Python).

The browser is Debian's ``chromium`` (``make system-deps`` installs it): Playwright's own browser
download cannot work offline, and is never needed. Every wait here waits for something the page or the
server does (an element, a value, an HTTP response), never for a length of time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from habla_ls.sample_recordings import DEFAULT_SENTENCES, SampleRecordings

CHROMIUM_ENV = "HABLA_LS_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# `make test` and CI set this: there a missing browser is a failure, not a skip.
REQUIRE_ENV = "HABLA_LS_REQUIRE_BROWSER"
ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "test-artifacts" / "browser"
VIEWPORT = {"width": 1280, "height": 800}
# Label Studio waits on its own server calls; a slow shared machine can take several seconds per page.
TIMEOUT_MS = 30_000

# What Habla's translator would have written for the sample sentences (sample_recordings writes none).
TRANSLATIONS = dict(
    zip(
        DEFAULT_SENTENCES,
        (
            "Good morning everyone, let's start the class.",
            "Open the book at page thirty-two.",
            "Who has finished yesterday's homework?",
            "Today we are going to talk about irregular verbs.",
            "Please write the date on the blackboard.",
            "The children in the second row are very quiet.",
            "Can you repeat the question more slowly?",
            "Tomorrow we have a maths exam.",
            "Close the windows, it is very cold.",
            "Very good, now read the text aloud.",
            "The capital of Andalusia is Seville.",
            "Put your notebooks away and go out to break.",
        ),
        strict=True,
    )
)


def chromium_path() -> str:
    """The browser to drive; skips the test (fails under `make test`) when it or Playwright is missing."""
    path = os.environ.get(CHROMIUM_ENV, DEFAULT_CHROMIUM)
    problem = None
    try:
        import playwright  # noqa: F401
    except ImportError:
        problem = "Playwright for Python is not installed (pip install -e '.[dev]')"
    if problem is None and not os.access(path, os.X_OK):
        problem = f"no Chromium at {path} (apt-get install chromium, or set {CHROMIUM_ENV})"
    if problem is not None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(problem)
        pytest.skip(problem)
    return path


@contextlib.contextmanager
def chromium_page() -> Iterator[Any]:
    """One fresh browser page (its own cookies and local storage)."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    # Chromium refuses to run as root with its sandbox on; containers and CI run tests as root.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=args, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT, locale="en-GB")
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


@contextlib.contextmanager
def screenshot_on_failure(page: Any, name: str) -> Iterator[None]:
    """Keeps what the page looked like when a step failed, next to the other artefacts."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(artifact(name)), full_page=True)
        raise


def artifact(name: str) -> Path:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR / name


def log_in(page: Any, url: str, email: str, password: str) -> None:
    page.goto(f"{url}/user/login/")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("button.login-button")
    page.wait_for_url(lambda u: "/user/login" not in u)


def is_next_task(response: Any) -> bool:
    """Label Studio's label stream asks for each next task through this Data Manager action."""
    return "/api/dm/actions" in response.url and "id=next_task" in response.url


def is_annotation_post(response: Any) -> bool:
    return response.request.method == "POST" and re.search(r"/api/tasks/\d+/annotations", response.url) is not None


def next_task_after(page: Any, action: Callable[[], None]) -> dict[str, Any]:
    """Runs ``action`` (a click, a hotkey) and returns the task the label stream opens next."""
    with page.expect_response(is_next_task) as response:
        action()
    assert response.value.ok, f"next task: HTTP {response.value.status} {response.value.text()[:200]}"
    return response.value.json()


def submit_and_next(page: Any, action: Callable[[], None]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Runs a submit or skip ``action``; (the annotation stored, the next task or None at the end)."""
    with page.expect_response(is_annotation_post) as stored, page.expect_response(is_next_task) as following:
        action()
    assert stored.value.ok, f"annotation: HTTP {stored.value.status} {stored.value.text()[:200]}"
    nxt = following.value
    return stored.value.json(), (nxt.json() if nxt.ok else None)


def time_box_seconds(text: str) -> float:
    """Label Studio's audio time box, ``HH:MM:SS:mmm``, in seconds."""
    hours, minutes, seconds, millis = (int(part) for part in text.split(":"))
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def add_translations(recordings: SampleRecordings, *, leave_out: set[str] = frozenset()) -> None:
    """Writes Habla's English translation into each stopped session's metadata.json, as Habla does."""
    by_key = {s.key: s for s in recordings.segments}
    for session in recordings.sessions:
        path = recordings.root / session / "metadata.json"
        if not path.exists():
            continue  # a live session has no metadata yet
        metadata = json.loads(path.read_text(encoding="utf-8"))
        for entry in metadata["segments"]:
            key = f"{session}/{entry['filename']}"
            if key not in leave_out:
                entry["translation"] = TRANSLATIONS.get(by_key[key].reference, "")
        path.write_text(json.dumps(metadata, indent=2), encoding="utf-8")
