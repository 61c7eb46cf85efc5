"""bench/term/standard_check.py: a promoted pair judged by the gate's own regression rule, and the report's line."""

from __future__ import annotations

from pathlib import Path

from bench.term.standard_check import judge
from bench.term.term_report import gate_rule_verdicts, markdown
from training.evaluation import ModelEvaluation
from training.metrics import Utterance, score_corpus

SENTENCE = "el mercado del barrio abre muy temprano los sábados por la mañana"  # 12 words
VOICES = ("kokoro:jf_nezumi", "kokoro:jm_kumo", "espeak:es-419", "espeak:es+m3")


def _report(version: str, wrong: dict[str, int], clips: int = 40) -> dict:
    """Every voice reads SENTENCE ``clips`` times; ``wrong[voice]`` of its clips lose their last word."""
    utterances = []
    for voice in VOICES:
        for n in range(clips):
            hypothesis = SENTENCE.rsplit(" ", 1)[0] if n < wrong.get(voice, 0) else SENTENCE
            utterances.append(Utterance(f"{voice}/{n}", SENTENCE, hypothesis, session=f"s-{voice}", speaker=voice, loudness_dbfs=-20.0))
    evaluation = ModelEvaluation(version, Path(version), "test", 5, reports={"standard": score_corpus(utterances)},
                                 set_ids={"standard": "standard"})
    return evaluation.to_dict()


def _slices(wrong_before: dict[str, int], wrong_after: dict[str, int]) -> dict[str, dict]:
    slices = judge(_report("v1", wrong_before), _report("v2", wrong_after), current="v1", candidate="v2")
    return {s["slice"]: s for s in slices}


def test_a_voice_that_loses_many_words_fails_as_the_gate_would() -> None:
    slices = _slices({}, {"kokoro:jm_kumo": 12})
    assert slices["voice kokoro:jm_kumo"]["failed"]
    assert slices["voice kokoro:jm_kumo"]["low"] > 0
    assert not slices["voice kokoro:jf_nezumi"]["failed"]
    assert {"overall", "family kokoro", "family espeak"} <= set(slices)


def test_a_rise_beyond_the_tolerance_that_is_not_credible_passes() -> None:
    # 480 words a voice: 1 -> 4 lost words is +0.006, beyond the 0.005 floor, but 3 clips of 40 are a
    # resample away from none ((37/40)^40 = 4 % > 2.5 %): the table's point rule flags it, the gate's does not.
    slices = _slices({"kokoro:jm_kumo": 1}, {"kokoro:jm_kumo": 4})
    jm = slices["voice kokoro:jm_kumo"]
    assert jm["point"] > jm["limit"]
    assert jm["low"] <= 0 and not jm["failed"]


def _row(round_: int, outcome: str, gate_rule: list | None) -> dict:
    return {
        "round": round_, "corrections": 20 * round_, "outcome": outcome, "served": f"habla-v{round_}", "candidate": f"habla-v{round_}",
        "gate": {"conditions": []}, "finish_seconds": 100.0, "steps": {"train": 50.0},
        "held_out": {"accent": 0.2, "standard": 0.05}, "candidate_held_out": None, "standard_vs_replaced": None,
        "standard_gate_rule": gate_rule,
    }


def test_the_report_names_credibly_worse_slices_and_counts_unjudged_promotions() -> None:
    failed = {"slice": "voice kokoro:jm_kumo", "before": 0.041, "after": 0.066, "point": 0.025, "low": 0.005, "high": 0.045,
              "limit": 0.005, "failed": True}
    within = dict(failed, slice="overall", failed=False)
    summary = {
        "schedule": [20, 40, 80], "base": {"accent": 0.235, "standard": 0.054},
        "runs": {"root:uncertainty:2": [_row(1, "refused", None), _row(2, "promoted", [within]), _row(3, "promoted", [within, failed])],
                 "root:uncertainty:3": [_row(1, "promoted", None)]},
        "groups": {"root:uncertainty": ["root:uncertainty:2", "root:uncertainty:3"]},
    }
    verdicts = gate_rule_verdicts(summary, "root:uncertainty")
    assert verdicts["judged"] == 2 and verdicts["not_judged"] == 1
    assert verdicts["failed"] == ["root:uncertainty:2 round 3 voice kokoro:jm_kumo: 0.041 -> 0.066 (+0.025, CI +0.005..+0.045, limit +0.005)"]
    summary["targets"] = {"root:uncertainty": {"rounds": 1, "standard_worse_than_replaced": [], "standard_gate_rule": verdicts}}
    line = next(x for x in markdown(summary).splitlines() if x.startswith("- **root:uncertainty**"))
    assert "2 promotion(s) judged by the gate's rule (standard_check.py), 1 not yet: credibly worse" in line
    assert "round 3 voice kokoro:jm_kumo" in line
