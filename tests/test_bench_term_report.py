"""bench/term's report: the gate's test condition of each round appears beside the held-out figures of the
version served before the round and of the candidate, so every decision can be checked on held-out sets."""

from __future__ import annotations

import json
from pathlib import Path

from bench.term.term_report import markdown, summarise


def _row(round_: int, outcome: str, gate: dict | None, held_out: dict, candidate_held_out: dict | None = None) -> dict:
    return {
        "round": round_, "corrections": 20 * round_, "outcome": outcome, "served": "habla-v1", "candidate": f"habla-v{round_}",
        "gate": gate, "finish_seconds": 100.0, "steps": {"train": 50.0},
        "held_out": held_out, "candidate_held_out": candidate_held_out, "standard_vs_replaced": None,
    }


def _gate_rows(summary: dict) -> list[str]:
    section = markdown(summary).split("## The gate's test split, round by round", 1)[1].split("##", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| root:")]


def test_each_decision_is_set_beside_the_held_out_figures_before_it_and_of_its_candidate() -> None:
    # Round 1 refused on its test split while a regression slice failed too, round 2 promoted, round 3 failed
    # before any gate.
    refused = {"name": "test", "passed": False, "decided": True, "current_wer": 0.215, "candidate_wer": 0.168,
               "point": -0.047, "ci_low": -0.112, "ci_high": 0.012, "clips": 3, "words": 25}
    promoted = {"name": "test", "passed": True, "decided": True, "current_wer": 0.5, "candidate_wer": 0.2,
                "point": -0.3, "ci_low": -0.45, "ci_high": -0.16, "clips": 6, "words": 57}
    quiet = {"name": "regression quiet speech", "passed": False, "decided": True}
    summary = {
        "schedule": [20, 40, 60], "base": {"accent": 0.235, "standard": 0.054},
        "runs": {"root:uncertainty:1": [
            _row(1, "refused", {"conditions": [refused, quiet]}, {"accent": 0.235, "standard": 0.054},
                 {"accent": 0.199, "standard": 0.039}),
            _row(2, "promoted", {"conditions": [promoted]}, {"accent": 0.144, "standard": 0.041}),
            _row(3, "failed", None, {"accent": 0.144, "standard": 0.041}),
        ]},
        "groups": {"root:uncertainty": ["root:uncertainty:1"]}, "targets": {},
    }
    assert _gate_rows(summary) == [
        "| root:uncertainty:1 | 1 | refused | 3 clips, 25 words | 0.215 -> 0.168 | -0.047 | -0.112..+0.012 | "
        "test, regression quiet speech | 0.235 / 0.054 | 0.199 / 0.039 |",
        "| root:uncertainty:1 | 2 | promoted | 6 clips, 57 words | 0.500 -> 0.200 | -0.300 | -0.450..-0.160 | - | "
        "0.235 / 0.054 | 0.144 / 0.041 |",
    ]


REFUSED = {"name": "test", "passed": False, "decided": True, "current_wer": 0.3, "candidate_wer": 0.25,
           "point": -0.05, "ci_low": -0.1, "ci_high": 0.01}


def _older_run(work: Path, gate_report: dict | None) -> None:
    """A run whose term record was written before records kept the test split's size."""
    reports = work / "root-random-1" / "reports"
    reports.mkdir(parents=True)
    record = {"round": 1, "corrections": 20, "outcome": "refused", "served_before": "whisper-base-v1",
              "served_after": "whisper-base-v1", "candidate": "habla-v1", "finish_seconds": 100.0, "steps": [],
              "gate": {"passed": False, "conditions": [REFUSED], "report": "/elsewhere/gate.json"}}
    (reports / "term.jsonl").write_text(json.dumps(record) + "\n")
    if gate_report is not None:
        (reports / "gate-habla-v1-vs-whisper-base-v1.json").write_text(json.dumps(gate_report))


def test_an_older_record_reads_its_split_size_from_the_gate_report_in_its_run(tmp_path: Path) -> None:
    _older_run(tmp_path, {"passed": False, "conditions": [{**REFUSED, "clips": 3, "words": 25}]})
    summary = summarise(tmp_path, ["root:random:1"], [20])
    assert _gate_rows(summary) == [
        "| root:random:1 | 1 | refused | 3 clips, 25 words | 0.300 -> 0.250 | -0.050 | -0.100..+0.010 | test | - / - | - / - |"
    ]


def test_a_gate_report_gone_leaves_the_size_unknown_not_the_row(tmp_path: Path) -> None:
    _older_run(tmp_path, None)
    summary = summarise(tmp_path, ["root:random:1"], [20])
    assert _gate_rows(summary) == [
        "| root:random:1 | 1 | refused | - | 0.300 -> 0.250 | -0.050 | -0.100..+0.010 | test | - / - | - / - |"
    ]
