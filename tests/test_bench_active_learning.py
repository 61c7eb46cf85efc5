"""The active-learning benchmark's bookkeeping: selection orders, the labels-to-match figure, the report.

The benchmark itself trains whisper-base (bench/active_learning/run.py); these tests cover the parts that
turn its runs into the reported numbers, on hand-made runs whose answer is known.
"""

from __future__ import annotations

import pytest

from bench.active_learning.pool import PoolScore, selection_orders
from bench.active_learning.summary import labels_to_match, markdown, plot, summarise


def _run(strategy: str, n: int, seed: int, wer: float) -> dict:
    return {
        "strategy": strategy, "n": n, "seed": seed, "version": f"al-{strategy}-n{n}-s{seed}-v1", "test_wer": wer,
        "test_wer_raw": wer + 0.05, "train_clips": n, "audio_minutes": n * 0.07, "mean_base_confidence": 0.8,
        "base_wer_on_selected": 0.3, "steps": n // 8, "training_seconds": 10.0, "evaluation_seconds": 5.0,
    }


def test_labels_to_match_interpolates_between_budgets():
    points = [(0, 0.30), (25, 0.25), (50, 0.15), (100, 0.10)]
    assert labels_to_match(points, 0.20) == pytest.approx(37.5)
    assert labels_to_match(points, 0.25) == pytest.approx(25.0)
    assert labels_to_match(points, 0.30) == pytest.approx(0.0)
    assert labels_to_match(points, 0.05) is None


def test_summary_averages_seeds_and_reports_labels_saved(tmp_path):
    runs = [
        _run("uncertainty", 25, 0, 0.20), _run("uncertainty", 25, 1, 0.22),
        _run("uncertainty", 50, 0, 0.14), _run("uncertainty", 50, 1, 0.16),
        _run("random", 25, 0, 0.26), _run("random", 25, 1, 0.24),
        _run("random", 50, 0, 0.19), _run("random", 50, 1, 0.17),
    ]
    meta = {"corpus": "c", "pool_clips": 160, "test_clips": 40, "epochs": 3.0, "batch_size": 8,
            "learning_rate": 0.001, "lora_r": 16, "beam_size": 5, "reference": None}
    summary = summarise(runs, 0.30, meta)
    uncertainty = {p["n"]: p for p in summary["curves"]["uncertainty"]}
    assert uncertainty[25]["mean_wer"] == pytest.approx(0.21)
    assert (uncertainty[25]["min_wer"], uncertainty[25]["max_wer"], uncertainty[25]["seeds"]) == (0.20, 0.22, 2)
    # random reaches 0.18 at N = 50; uncertainty crosses 0.18 between 25 (0.21) and 50 (0.15): at 37.5
    assert summary["match"]["random_n"] == 50
    assert summary["match"]["uncertainty_labels_needed"] == pytest.approx(37.5)
    assert summary["match"]["labels_saved"] == pytest.approx(12.5)
    text = markdown(summary)
    assert "| 25 | 0.210 (0.200-0.220) | 0.250 (0.240-0.260) | 2/2 |" in text
    assert "about 38 labels" in text
    png = tmp_path / "curve.png"
    plot(summary, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_labels_to_match_figure_when_more_labels_made_random_worse():
    # This session's grid: random 0.153 at N = 20, then 0.255 at N = 40, worse than the base 0.179. Any
    # curve "reaches" 0.255 at N = 0, which would credit the selection with 40 saved labels.
    runs = [_run("uncertainty", 20, 0, 0.159), _run("uncertainty", 40, 0, 0.216),
            _run("random", 20, 0, 0.154), _run("random", 40, 0, 0.255)]
    meta = {"corpus": "c", "pool_clips": 160, "test_clips": 40, "epochs": 2.0, "batch_size": 4,
            "learning_rate": 0.001, "lora_r": 16, "beam_size": 5, "reference": None}
    summary = summarise(runs, 0.179, meta)
    assert summary["match"]["degenerate"] is True
    assert summary["match"]["uncertainty_labels_needed"] is None and summary["match"]["labels_saved"] is None
    text = markdown(summary)
    assert "does not fall with N" in text and "fewer)" not in text


def test_uncertainty_order_puts_low_confidence_first_and_random_orders_are_seeded():
    rows = [
        {"segment_key": f"s{i % 2}/c{i}.wav", "session": f"s{i % 2}", "speaker": f"v{i % 2}", "transcript": "hola"}
        for i in range(6)
    ]
    confidences = [0.9, 0.2, 0.8, 0.5, 0.95, 0.1]
    scores = {
        row["segment_key"]: PoolScore(row["segment_key"], "hola que tal", c, -0.1, 1.0)
        for row, c in zip(rows, confidences, strict=True)
    }
    orders = selection_orders(rows, scores, [0, 1])
    # least confident first; the product's diversity rule then lets c2 (confidence 0.8, another session
    # and speaker) ahead of c3 (0.5, a third clip of s1/v1)
    assert orders["uncertainty"][:3] == ["s1/c5.wav", "s1/c1.wav", "s0/c2.wav"]
    assert sorted(orders["random"][0]) == sorted(r["segment_key"] for r in rows)
    assert orders["random"][0] != orders["random"][1]
    assert orders["random"][0] == selection_orders(rows, scores, [0])["random"][0]
