"""bench/term's report: the gate's test condition of each round appears beside the held-out figures."""

from __future__ import annotations

from bench.term.term_report import markdown


def _row(round_: int, outcome: str, test: dict | None) -> dict:
    return {
        "round": round_, "corrections": 20 * round_, "outcome": outcome, "served": "habla-v1", "candidate": f"habla-v{round_}",
        "gate": {"conditions": [test] if test else []}, "finish_seconds": 100.0, "steps": {"train": 50.0},
        "held_out": {"accent": 0.2, "standard": 0.05}, "candidate_held_out": None, "standard_vs_replaced": None,
    }


def test_every_round_with_a_test_condition_gets_its_interval() -> None:
    refused = {"name": "test", "current_wer": 0.215, "candidate_wer": 0.168, "point": -0.047, "ci_low": -0.112, "ci_high": 0.012}
    summary = {
        "schedule": [20, 40], "base": {"accent": 0.229, "standard": 0.056},
        "runs": {"root:uncertainty:1": [_row(1, "refused", refused), _row(2, "failed", None)]},
        "groups": {"root:uncertainty": ["root:uncertainty:1"]}, "targets": {},
    }
    text = markdown(summary)
    section = text.split("## The gate's test split, round by round", 1)[1].split("##", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| root:")]
    assert rows == ["| root:uncertainty:1 | 1 | refused | 0.215 -> 0.168 | -0.047 | -0.112..+0.012 |"]
