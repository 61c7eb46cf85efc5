"""What ``habla-ls demo`` prints at its end: the WERs before and after, the gate's conditions, which transcript
prefills the page, and where to look next in Label Studio."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import click

DEMO_PROJECT = "Habla demo"


@dataclass
class DemoResult:
    ls_url: str
    username: str
    password: str
    token: str
    before_version: str | None
    after_version: str | None
    served_by_backend: str | None
    wer: dict[str, dict[str, float | None]]  # version -> {"test": ..., "regression": ...}
    seconds: float
    gate_lines: list[str] = field(default_factory=list)  # the gate's conditions, one line each
    gate_report: Path | None = None
    prefill_line: str = ""  # which transcript prefills the page, and why (the decision's headline; its table the steps above print)
    work_dir: Path | None = None
    next_tasks: int = 0  # tasks in the round's view after the last round: what a human corrects next
    prefilled_by: str | None = None  # the source that prefills the page (the served version unless a better one)


def gate_summary(reports_dir: Path, candidate: str, current: str | None) -> tuple[list[str], Path | None]:
    """The gate's conditions (test split, then each regression slice with its interval) from its report."""
    if current is None or current == candidate:
        return [], None
    from training.promotion import gate_report_path

    path = gate_report_path(reports_dir, candidate, current, "json")
    try:
        decision = json.loads(path.read_text())
    except (OSError, ValueError):
        return [f"no gate report at {path}"], None
    lines = [f"gate: {candidate} vs {current}: {'PASSED' if decision.get('passed') else 'refused'}"]
    for condition in decision.get("conditions") or []:
        mark = "ok  " if condition.get("passed") else ("FAIL" if condition.get("decided") else "info")
        lines.append(
            f"  {mark} {condition['name']:<40} {condition['current_wer']:.3f} -> {condition['candidate_wer']:.3f} "
            f"({condition['point']:+.3f}, CI {condition['ci_low']:+.3f}..{condition['ci_high']:+.3f}; {condition['clips']} clips)"
        )
    lines += [f"  note: {note}" for note in decision.get("notes") or []]
    return lines, path.with_suffix(".md")


def print_result(result: DemoResult, echo=click.echo) -> None:
    echo(click.style("\nResult", bold=True))
    echo(f"{'version':<24} {'test WER (accented, held-out sessions)':>40} {'standard-Spanish WER':>22}")
    for version, figures in result.wer.items():
        test = "-" if figures["test"] is None else f"{figures['test']:.3f}"
        reg = "-" if figures["regression"] is None else f"{figures['regression']:.3f}"
        echo(f"{version:<24} {test:>40} {reg:>22}")
    echo(f"served before: {result.before_version}; served now: {result.after_version}; the backend answers: {result.served_by_backend}")
    if result.gate_lines:
        echo("")
        for line in result.gate_lines:
            echo(line)
        if result.gate_report:
            echo(f"  (slice table: {result.gate_report})")
    if result.prefill_line:
        echo("")
        echo(result.prefill_line)
    echo(f"\nLabel Studio: {result.ls_url}  login {result.username} / {result.password}")
    if result.next_tasks:
        from habla_ls.prefill import HABLA_SOURCES
        from habla_ls.round import DEFAULT_VIEW_TITLE

        # The page marks the words of the model version that prefills it; Habla's own transcript has none.
        marks = ", its words to check marked" if result.prefilled_by and result.prefilled_by not in HABLA_SOURCES else ""
        echo(f"  to correct next: project '{DEMO_PROJECT}', view '{DEFAULT_VIEW_TITLE}': {result.next_tasks} task(s) prefilled by"
             f" {result.prefilled_by or 'nothing yet'}{marks}")
    echo("(the token is in the data dir's habla-ls-credentials.json; the servers keep running: stop them with")
    echo(f"  habla-ls --home {result.work_dir / 'home'} backend stop")
    echo(f"  habla-ls labelstudio down --data-dir {result.work_dir / 'label-studio'})")
    echo(f"demo took {result.seconds / 60:.1f} min")
