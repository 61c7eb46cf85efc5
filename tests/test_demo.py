"""The demo, shortened (tiny model, a few clips), end to end against the real Label Studio:
push -> round -> simulated annotations -> pull -> train -> evaluate -> promote -> the backend serves it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from habla_ls.demo import Demo, DemoOptions
from habla_ls.demo_result import DEMO_PROJECT, DemoResult, print_result
from habla_ls.prefill import SOURCE_GROUND_TRUTH, describe_saved
from habla_ls.prefill import load as load_prefill
from habla_ls.round import DEFAULT_VIEW_TITLE
from ml_backend.registry import read_card, read_current
from sync.ls_client import LabelStudioClient
from synth.kokoro import kokoro_installed

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_short_demo_end_to_end(label_studio, ls_home, tiny_ct2_dir, tiny_decoding):
    from sync.ls_server import free_port

    options = DemoOptions(
        work_dir=ls_home / "demo",
        backend_port=free_port(),
        sessions=4,
        segments_per_session=3,
        budget=9,
        base_ct2=tiny_ct2_dir,
        epochs=1,
        max_steps=2,
        batch_size=4,
        force_promote=True,  # a random tiny model cannot earn promotion on merit
        keep_servers=False,
        sentence_set="classroom",
    )
    lines: list[str] = []
    result = Demo(options, echo=lambda text="", **_: lines.append(str(text)), label_studio=label_studio).run()

    assert result.before_version == "base-v1"
    assert result.after_version != "base-v1" and result.after_version == read_current(options.home / "models")
    # The running backend answered with the promoted version, without a restart.
    assert result.served_by_backend == result.after_version
    card = read_card(options.home / "models" / result.after_version)
    assert card["parent"] == "base-v1"
    assert card["train_clips"] > 0
    assert set(result.wer) == {"base-v1", result.after_version}
    assert all(figures["test"] is not None for figures in result.wer.values())
    # Every annotation came from the clearly labelled simulation, with the known sentences.
    assert any("SIMULATION" in line for line in lines)
    # The recordings are natural training voices when Kokoro is installed, and the output says which.
    voices = "natural Kokoro voices (profesora jf_alpha, alumna jf_gongitsune)" if kokoro_installed() else "fall back to espeak-ng"
    assert any(voices in line for line in lines)
    manifest = [json.loads(line) for line in (options.home / "datasets" / "manifest.jsonl").read_text().splitlines()]
    references = json.loads(options.references_path.read_text())
    assert len(manifest) == 9
    assert all(row["transcript"] == references[row["segment_key"]] for row in manifest)
    # The served version was delivered where Habla loads its model.
    delivered = (options.habla_model_dir / "whisper_model.env").read_text()
    assert f"WHISPER_MODEL={(options.habla_model_dir / result.after_version).resolve()}" in delivered
    assert (options.habla_model_dir / result.after_version / "model.bin").is_file()
    # A last round ranked what is left with the promoted version, so the round's view is not left empty: it
    # holds the uncorrected tasks (up to the budget), each predicted by the version now served, and the
    # output points there, naming what prefills them.
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        project_id = int(client.find_project(DEMO_PROJECT)["id"])
        tasks = list(client.iter_tasks(project_id, all_fields=True))
        view = next(v for v in client.views(project_id) if v["data"].get("title") == DEFAULT_VIEW_TITLE)
        in_view = {int(t["id"]) for t in client.iter_tasks(project_id, view_id=int(view["id"]), include="id")}
    uncorrected = [t for t in tasks if not t.get("annotations")]
    assert len(uncorrected) <= options.budget
    assert 0 < result.next_tasks == len(in_view) and in_view == {int(t["id"]) for t in uncorrected}
    assert all(any(p.get("model_version") == result.after_version for p in t["predictions"]) for t in uncorrected)
    decision = load_prefill(options.home)
    assert decision is not None and result.prefilled_by == decision.prefill
    # 9 corrections are fewer than the 10 common tasks another source needs: the served version prefills.
    assert decision.prefill == result.after_version
    printed: list[str] = []
    print_result(result, echo=lambda text="", **_: printed.append(str(text)))
    assert any(f"{result.next_tasks} task(s) prefilled by {decision.prefill}, its words to check marked" in line for line in printed)
    # The decision's table was printed by the round and status steps: the result repeats only its headline.
    headline, *table = describe_saved(decision)
    assert headline in printed and not any(line in printed for line in table)


def test_the_closing_lines_claim_no_marks_when_habla_prefills():
    headline = f"prefill: {SOURCE_GROUND_TRUTH} -- Habla's transcript is better than the served version's on 12 tasks"
    result = DemoResult("http://127.0.0.1:8080", "u", "p", "t", "base-v1", "habla-v1", "habla-v1", {}, 60.0,
                        prefill_line=headline,
                        work_dir=Path("demo-data"), next_tasks=5, prefilled_by=SOURCE_GROUND_TRUTH)
    printed: list[str] = []
    print_result(result, echo=lambda text="", **_: printed.append(str(text)))
    line = next(line for line in printed if "to correct next" in line)
    assert line.endswith(f"5 task(s) prefilled by {SOURCE_GROUND_TRUTH}")
    assert headline in printed


def test_without_kokoro_the_demo_falls_back_to_espeak_and_says_so(tmp_path, monkeypatch):
    """Kokoro's absence cannot be produced with the synth extra installed: its check is what is replaced."""
    import numpy as np

    from synth import kokoro
    from synth.accent import spelt_as_heard
    from synth.espeak import EspeakVoice, synthesize

    monkeypatch.setattr(kokoro, "kokoro_installed", lambda: False)
    lines: list[str] = []
    demo = Demo(DemoOptions(work_dir=tmp_path), echo=lambda text="", **_: lines.append(str(text)))
    speak, described = demo.sample_voices(("profesora", "alumna"), ("alumna",))
    assert any("Kokoro (the synth extra) is not installed" in line and "espeak-ng" in line for line in lines)
    assert described.startswith("espeak-ng (fallback")
    text = "Los niños están cansados."
    # The teacher speaks with a training voice ("es"), reading the Andalusian respelling.
    expected = synthesize(spelt_as_heard(text), EspeakVoice("es", 150, 45))
    np.testing.assert_array_equal(speak(text, "profesora"), expected)
