"""The learning curve `habla-ls status` prints and plots: which versions it shows, in what order, with which
figures, and that the JSON it reports is the same curve the table and the PNG are drawn from."""

from __future__ import annotations

import json
from pathlib import Path

from habla_ls.learning_curve import curve, from_dicts, lines, plot, to_dicts
from ml_backend.registry import CARD_FILE, CURRENT_FILE, PRUNED_FIELD
from training.eval_report import report_paths
from training.paired_sets import REGRESSION_SET, TEST_SET


def _version(models: Path, reports: Path, name: str, card: dict, sets: dict | None = None, test_split: str = "split-a") -> None:
    (models / name).mkdir(parents=True)
    (models / name / CARD_FILE).write_text(json.dumps({"version": name, **card}))
    if sets is not None:
        report = {"sets": {key: {"utterances": clips, "levels": {"normalised": {"wer": wer}}}
                           for key, (wer, clips) in sets.items()},
                  "set_ids": {TEST_SET: test_split, REGRESSION_SET: "regression"}}
        report_paths(name, reports)["json"].write_text(json.dumps(report))


def test_the_curve_orders_versions_by_corrections_and_reads_each_evaluation(tmp_path: Path) -> None:
    models, reports = tmp_path / "models", tmp_path / "reports"
    reports.mkdir()
    _version(models, reports, "base-v1", {"parent": None}, {REGRESSION_SET: (0.054, 60)})
    # v2: the corrections counted from its splits (an older card without "corrections"), promoted, then replaced.
    _version(models, reports, "base-v2", {"parent": "base-v1", "promoted": True, "train_clips": 30,
                                          "validation_clips": 4, "test_clips": 6},
             {TEST_SET: (0.20, 6), REGRESSION_SET: (0.050, 60)})
    # v3 trained on fewer corrections than v2 was: it sorts before it. Refused: no report, its card's figure.
    _version(models, reports, "base-v3", {"parent": "base-v1", "corrections": 20, "test_wer_normalised": 0.31})
    _version(models, reports, "base-v4", {"parent": "base-v2", "corrections": 80, "promoted": True},
             {TEST_SET: (0.15, 12), REGRESSION_SET: (0.047, 60)})
    _version(models, reports, "base-v5", {"parent": "base-v4", "corrections": 160})  # never evaluated: left out
    (models / CURRENT_FILE).write_text("base-v4\n")

    points = curve(models, reports)

    assert [(p.version, p.corrections) for p in points] == [("base-v1", 0), ("base-v3", 20), ("base-v2", 40), ("base-v4", 80)]
    by_name = {p.version: p for p in points}
    assert by_name["base-v2"].test_wer == 0.20 and by_name["base-v2"].test_clips == 6
    assert by_name["base-v3"].test_wer == 0.31 and by_name["base-v3"].regression_wer is None
    assert [p.version for p in points if p.served] == ["base-v4"]
    assert [p.version for p in points if p.promoted] == ["base-v1", "base-v2", "base-v4"]

    table = lines(points)
    assert any(line.startswith("  * base-v4") for line in table)
    assert any(line.startswith("  + base-v2") for line in table)
    assert any(line.startswith("    base-v3") for line in table)

    # What `status --json` reports is the curve itself: the table and the plot are drawn from it unchanged.
    assert from_dicts(json.loads(json.dumps(to_dicts(points)))) == points
    assert plot(points, reports / "learning-curve.png").stat().st_size > 0


def test_no_evaluated_version_says_how_to_get_one(tmp_path: Path) -> None:
    assert curve(tmp_path / "models", tmp_path / "reports") == []
    assert "habla-ls finish" in lines([])[0]
    assert plot([], tmp_path / "learning-curve.png") is None


def test_figures_on_different_test_splits_come_with_the_command_that_puts_them_on_one(tmp_path: Path) -> None:
    models, reports = tmp_path / "models", tmp_path / "reports"
    reports.mkdir()
    _version(models, reports, "base-v1", {"parent": None}, {TEST_SET: (0.30, 6), REGRESSION_SET: (0.05, 60)}, "split-a")
    _version(models, reports, "base-v2", {"parent": "base-v1", "corrections": 40}, {TEST_SET: (0.20, 6)}, "split-a")
    assert not any("different test splits" in line for line in lines(curve(models, reports)))

    # A later finish evaluated v3 and the served v1 on a grown split; v2's figure stays on the old one.
    _version(models, reports, "base-v3", {"parent": "base-v1", "corrections": 80}, {TEST_SET: (0.15, 12)}, "split-b")
    [hint] = [line for line in lines(curve(models, reports)) if "different test splits" in line]
    assert "2 different test splits" in hint and "`habla-ls evaluate base-v1 base-v2 base-v3` puts every version" in hint

    # A pruned version has no weights to evaluate again: left out of the command.
    card = json.loads((models / "base-v2" / CARD_FILE).read_text())
    (models / "base-v2" / CARD_FILE).write_text(json.dumps({**card, PRUNED_FIELD: True}))
    [hint] = [line for line in lines(curve(models, reports)) if "different test splits" in line]
    assert "`habla-ls evaluate base-v1 base-v3` puts these versions" in hint
