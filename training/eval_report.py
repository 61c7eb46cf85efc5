"""An evaluation written out: ``reports/<version>.{json,md,png}`` and ``compare-<a>-vs-<b>.{md,png}``.

The Markdown holds WER per set and slice with bootstrap intervals, and for a comparison the promotion
gate's slice table (:mod:`training.gate_report`); the JSON keeps every utterance, which the gate reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.evaluation import ModelEvaluation
from training.gate import GateDecision, judge
from training.gate_report import slice_table, version_slice_table
from training.paired_sets import DECODED_ALONE, ESPEAK_ONLY_NOTE, REGRESSION_SET, TEST_SET, report_notes


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _head(report: dict[str, Any]) -> list[str]:
    """The Kokoro-absent warning, when due, as the report's first line."""
    notes = report_notes(report)
    return [*notes, ""] if notes else []


def _gate_section(decision: GateDecision, title: str) -> list[str]:
    lines = ["", f"## {title}", ""]
    if not decision.conditions:
        return lines + [f"- not comparable: {r}" for r in decision.reasons]
    lines.append(f"The promotion gate (default options) {'passes' if decision.passed else 'refuses'} {decision.candidate}.")
    lines += ["", *slice_table(decision.conditions, decision.current or "current", decision.candidate), ""]
    lines += [f"- {r}" for r in decision.reasons]
    lines += [f"- {n}" for n in decision.notes if n != ESPEAK_ONLY_NOTE]
    return lines


def markdown(evaluation: ModelEvaluation, against: dict[str, Any] | None = None) -> str:
    """The per-version report; ``against`` (the reference version's report dict) adds the gate's slice table."""
    data = evaluation.to_dict()
    lines = _head(data)
    lines += [f"# {evaluation.version}", "", f"Model `{evaluation.model_path}` ({evaluation.backend}, beam {evaluation.beam_size}, "
              f"{'each clip decoded alone' if evaluation.decoding == DECODED_ALONE else 'clips packed into shared 30-s windows'}).", ""]
    lines += ["| set | clips | WER raw | WER normalised | WER accent-insensitive | CER normalised |", "|---|---:|---:|---:|---:|---:|"]
    for name, report in evaluation.reports.items():
        lv = report.levels
        lines.append(
            f"| {name} | {report.utterances} | {_pct(lv['raw'].wer)} | {_pct(lv['normalised'].wer)} | "
            f"{_pct(lv['accent_insensitive'].wer)} | {_pct(lv['normalised'].cer)} |"
        )
    intervals = version_slice_table(data)
    if intervals:
        lines += ["", "## WER by slice, with bootstrap intervals", "", *intervals]
    if against is not None:
        decision = judge(data, against, candidate=evaluation.version, current=str(against.get("version")))
        lines += _gate_section(decision, f"Against {decision.current}: paired differences")
    for name, report in evaluation.reports.items():
        groups_by = (("session", report.by_session), ("speaker", report.by_speaker), ("family", report.by_family), ("loudness", report.by_loudness))
        for title, groups in groups_by:
            if len(groups) < 2 and title != "loudness":
                continue
            lines += ["", f"## {name}: by {title}", "", f"| {title} | clips | WER | CER |", "|---|---:|---:|---:|"]
            lines += [f"| {g.name} | {g.utterances} | {_pct(g.wer)} | {_pct(g.cer)} |" for g in groups.values()]
        if report.worst:
            lines += ["", f"## {name}: worst utterances", "", "| segment | WER | reference | hypothesis |", "|---|---:|---|---|"]
            for u in report.worst:
                ref, hyp = (s.replace("|", "\\|") for s in (u.reference, u.hypothesis))
                lines.append(f"| {u.key} | {_pct(u.wer)} | {ref} | {hyp} |")
    if evaluation.skipped:
        lines += ["", "## not scored", ""] + [f"- {line}" for line in evaluation.skipped]
    return "\n".join(lines) + "\n"


def comparison_markdown(evaluations: Sequence[ModelEvaluation], reference: int = 0) -> str:
    """Versions side by side; for two, the paired gate comparison of the other one against ``reference``."""
    names = sorted({n for e in evaluations for n in e.reports})
    head: list[str] = []
    for e in evaluations:
        head = head or _head(e.to_dict())
    lines = [*head, "# " + " vs ".join(e.version for e in evaluations), ""]
    lines += ["| version | " + " | ".join(f"{n} WER" for n in names) + " |", "|---|" + "---:|" * len(names)]
    for e in evaluations:
        lines.append(f"| {e.version} | " + " | ".join(_pct(e.reports[n].wer) if n in e.reports else "-" for n in names) + " |")
    if len(evaluations) == 2 and all(n in e.reports for e in evaluations for n in names):
        a, b = evaluations[reference], evaluations[1 - reference]
        lines.append("")
        for n in names:
            before, after = a.reports[n].wer, b.reports[n].wer
            change = (after - before) / before if before else 0.0
            lines.append(f"- {n}: {_pct(before)} → {_pct(after)} ({change:+.1%} relative)")
        same = all(a.set_ids.get(n) == b.set_ids.get(n) for n in names)
        lines.append(f"- same audio for both: {'yes' if same else 'NO — figures do not compare'}")
        decision = judge(b.to_dict(), a.to_dict(), candidate=b.version, current=a.version)
        lines += _gate_section(decision, f"Promotion gate: {b.version} against {a.version}")
    return "\n".join(lines) + "\n"


def chart(evaluations: Sequence[ModelEvaluation], path: Path) -> Path:
    """Grouped bars: WER per set and level for each version, and normalised WER by test session."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        (f"{name}\n{level.replace('_', '-')}", name, level)
        for name in (TEST_SET, REGRESSION_SET)
        for level in ("raw", "normalised", "accent_insensitive")
        if any(name in e.reports for e in evaluations)
    ]
    sessions = sorted({s for e in evaluations if TEST_SET in e.reports for s in e.reports[TEST_SET].by_session})
    fig, axes = plt.subplots(1, 2 if sessions else 1, figsize=(12 if sessions else 7, 4.5), squeeze=False)
    width = 0.8 / max(len(evaluations), 1)
    for k, e in enumerate(evaluations):
        values = [100 * e.reports[n].levels[lv].wer if n in e.reports else 0.0 for _, n, lv in bars]
        axes[0][0].bar([i + k * width for i in range(len(bars))], values, width, label=e.version)
        if sessions:
            by = e.reports[TEST_SET].by_session if TEST_SET in e.reports else {}
            axes[0][1].bar(
                [i + k * width for i in range(len(sessions))], [100 * by[s].wer if s in by else 0.0 for s in sessions], width, label=e.version
            )
    axes[0][0].set_xticks([i + width * (len(evaluations) - 1) / 2 for i in range(len(bars))], [b[0] for b in bars], fontsize=8)
    axes[0][0].set_ylabel("WER (%)")
    axes[0][0].set_title("WER by set and normalisation")
    axes[0][0].legend()
    if sessions:
        axes[0][1].set_xticks([i + width * (len(evaluations) - 1) / 2 for i in range(len(sessions))], sessions, rotation=30, ha="right", fontsize=7)
        axes[0][1].set_title("test WER (normalised) by session")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def report_paths(version: str, reports_dir: Path) -> dict[str, Path]:
    stem = _safe(version)
    return {suffix: Path(reports_dir) / f"{stem}.{suffix}" for suffix in ("json", "md", "png")}


def write_reports(evaluation: ModelEvaluation, reports_dir: Path, against: dict[str, Any] | None = None) -> dict[str, Path]:
    """JSON (every utterance), Markdown and PNG of one version; ``against`` adds the gate comparison."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    paths = report_paths(evaluation.version, reports_dir)
    _write_text(paths["json"], json.dumps(evaluation.to_dict(), indent=2, ensure_ascii=False) + "\n")
    _write_text(paths["md"], markdown(evaluation, against))
    chart([evaluation], paths["png"])
    return paths


def write_comparison(evaluations: Sequence[ModelEvaluation], reports_dir: Path, reference: int = 0) -> dict[str, Path]:
    stem = "compare-" + "-vs-".join(_safe(e.version) for e in evaluations)
    paths = {"md": Path(reports_dir) / f"{stem}.md", "png": Path(reports_dir) / f"{stem}.png"}
    _write_text(paths["md"], comparison_markdown(evaluations, reference))
    chart(evaluations, paths["png"])
    return paths
