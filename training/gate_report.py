"""The promotion gate's figures as Markdown: a decision's report and slice table, one version's intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from training.gate import Condition, GateDecision, GateOptions, slice_interval
from training.paired_sets import (
    ESPEAK_ONLY_NOTE,
    REGRESSION_SET,
    TEST_SET,
    GateError,
    regression_slices,
    single_set,
)


def _cell(value: float, signed: bool = False) -> str:
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def slice_table(conditions: Sequence[Condition], current: str, candidate: str) -> list[str]:
    """The slice table of a comparison, as Markdown lines."""
    if not conditions:
        return []
    pct = f"{conditions[0].confidence * 100:g} %"
    lines = [
        f"| slice | clips | words | WER {current} | WER {candidate} | difference | {pct} CI | limit | resampled | verdict |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|---|",
    ]
    for c in conditions:
        if not c.decided:
            verdict = "not decided (too small)"
        elif c.kind == "improvement":
            verdict = "credible improvement" if c.passed else "**not credible**" if c.point < c.limit else "**no improvement**"
        else:
            verdict = "ok" if c.passed else "**worse**"
        lines.append(
            f"| {c.name} | {c.clips} | {c.words} | {_cell(c.current_wer)} | {_cell(c.candidate_wer)} | {_cell(c.point, True)} | "
            f"{_cell(c.ci_low, True)}..{_cell(c.ci_high, True)} | {_cell(c.limit, True)} | {c.unit}s ({c.units}) | {verdict} |"
        )
    return lines


def decision_markdown(decision: GateDecision) -> str:
    """A gate decision as a Markdown report (the Kokoro note, when due, is its first line)."""
    lines = [*decision.notes[:1]] if decision.notes and decision.notes[0] == ESPEAK_ONLY_NOTE else []
    if lines:
        lines.append("")
    verdict = "passes" if decision.passed else "refuses"
    lines += [f"# Promotion gate: {decision.candidate} vs {decision.current or 'nothing served'}", "", f"The gate **{verdict}**.", ""]
    lines += [f"- {r}" for r in decision.reasons]
    if decision.conditions:
        lines += ["", *slice_table(decision.conditions, decision.current or "current", decision.candidate)]
    rest = [n for n in decision.notes if n != ESPEAK_ONLY_NOTE]
    o = decision.options
    rest.append(
        f"rule: test improvement beyond {o.margin:.0%} with its interval below 0; a regression slice fails when worse by more "
        f"than max({o.regression_tolerance:.0%} x its WER, {o.regression_floor}) with its interval above 0; slices under "
        f"{o.min_slice_words} words not decided; {o.resamples} resamples, seed {o.seed}"
    )
    lines += ["", *[f"- {n}" for n in rest]]
    return "\n".join(lines) + "\n"


def version_slices(report: Mapping[str, Any], options: GateOptions | None = None) -> list[dict[str, Any]]:
    """One version's WER with its interval on the test split and each regression slice (for its report)."""
    options = options or GateOptions()
    rows = []
    for name in (TEST_SET, REGRESSION_SET):
        try:
            whole = single_set(name, report, str(report.get("version") or "this version"))
        except GateError:
            continue
        if name == TEST_SET:
            parts, kind, clusters = [("overall", np.ones(len(whole), dtype=bool))], "session", "sessions"
        else:
            parts, kind, clusters = regression_slices(whole), "speaker", "speakers"
        for slice_name, mask in parts:
            part = whole.subset(mask)
            if part.words.sum() <= 0:
                continue
            interval = slice_interval(part, kind, getattr(part, clusters), options)
            rows.append(
                {
                    "slice": f"{name} {slice_name}",
                    "clips": len(part),
                    "words": int(part.words.sum()),
                    "wer": interval.point,
                    "ci_low": interval.low,
                    "ci_high": interval.high,
                    "unit": interval.unit,
                    "units": interval.units,
                }
            )
    return rows


def version_slice_table(report: Mapping[str, Any], options: GateOptions | None = None) -> list[str]:
    """:func:`version_slices` as Markdown lines."""
    options = options or GateOptions()
    rows = version_slices(report, options)
    if not rows:
        return []
    pct = f"{options.confidence * 100:g} %"
    lines = [f"| slice | clips | words | WER | {pct} CI | resampled |", "|---|---:|---:|---:|---|---|"]
    lines += [
        f"| {r['slice']} | {r['clips']} | {r['words']} | {r['wer']:.3f} | {r['ci_low']:.3f}..{r['ci_high']:.3f} | {r['unit']}s ({r['units']}) |"
        for r in rows
    ]
    return lines
