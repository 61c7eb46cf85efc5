"""``habla-ls models list / promote / rollback``, and the promotion gate applied to the registry.

A version is served (``CURRENT`` switched atomically, so the backend hot-swaps it) only when the gate of
:mod:`training.gate` passes, unless ``--force``. The gate reads the per-utterance report each version's
model card points at (``eval_report``, written by ``habla-ls evaluate``) and compares the two versions
on the same clips:

1. the test-split WER improves by more than the margin and credibly (the bootstrap interval of
   candidate − current lies below zero), and
2. no regression slice (whole set, each voice family, each voice/speaker, quiet speech) is worse by
   more than max(tolerance x its WER, floor) with an interval above zero.

Reports from different test splits or regression sets are never compared: the gate asks for both
versions to be evaluated together (``promote`` does that itself unless ``--no-evaluate``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from ml_backend.registry import RegistryError, list_versions, read_card, read_current, version_dir
from training import registry as writer
from training.gate import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MARGIN,
    DEFAULT_MIN_SLICE_WORDS,
    DEFAULT_REGRESSION_FLOOR,
    DEFAULT_REGRESSION_TOLERANCE,
    DEFAULT_RESAMPLES,
    ESPEAK_ONLY_NOTE,
    REGRESSION_SET,
    GateDecision,
    GateOptions,
    decision_markdown,
    judge,
)

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MARGIN", "DEFAULT_REGRESSION_TOLERANCE", "GateDecision", "GateOptions", "check_gate", "decide", "promote"]

REPORT_FIELD = "eval_report"  # model-card key: the reports/<version>.json the card's figures came from


def _load_report(card: Mapping[str, Any], reports_dir: Path | None) -> dict[str, Any] | None:
    """The evaluation report a card points at; if the home moved, the same file name under ``reports_dir``."""
    named = card.get(REPORT_FIELD)
    if not named:
        return None
    candidates = [Path(named)]
    if reports_dir is not None:
        candidates.append(Path(reports_dir) / Path(named).name)
    for path in candidates:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable evaluation report (%s)", path, exc)
            return None
    return None


def _options(options: GateOptions | None, margin: float | None, regression_tolerance: float | None) -> GateOptions:
    options = options or GateOptions()
    changes = {k: v for k, v in (("margin", margin), ("regression_tolerance", regression_tolerance)) if v is not None}
    return GateOptions(**{**options.to_dict(), **changes})


def check_gate(
    candidate_card: dict[str, Any],
    current_card: dict[str, Any] | None,
    *,
    margin: float | None = None,
    regression_tolerance: float | None = None,
    options: GateOptions | None = None,
    reports_dir: Path | None = None,
    expected_set_ids: Mapping[str, str] | None = None,
) -> GateDecision:
    """Decide from two model cards (``version`` key included) through the reports they point at.

    ``margin``/``regression_tolerance`` override the same fields of ``options``. Every failed condition
    is one line of ``reasons``; ``conditions`` holds the machine-readable figures.
    """
    options = _options(options, margin, regression_tolerance)
    candidate = str(candidate_card.get("version", "?"))
    if current_card is None:
        return judge({}, None, options, candidate=candidate)
    current = str(current_card.get("version", "?"))
    reports = {v: _load_report(card, reports_dir) for v, card in ((candidate, candidate_card), (current, current_card))}
    missing = [v for v, report in reports.items() if report is None]
    if missing:
        return GateDecision(
            candidate, current, False,
            [f"no per-utterance evaluation report for {', '.join(missing)}: run `habla-ls evaluate {candidate} {current}`"],
            margin=options.margin, regression_tolerance=options.regression_tolerance, needs_evaluation=True, options=options,
        )
    return judge(reports[candidate], reports[current], options, candidate=candidate, current=current, expected_set_ids=expected_set_ids)


def decide(
    models_dir: Path,
    version: str,
    *,
    margin: float | None = None,
    regression_tolerance: float | None = None,
    options: GateOptions | None = None,
    reports_dir: Path | None = None,
    expected_set_ids: Mapping[str, str] | None = None,
) -> GateDecision:
    """The gate for ``version`` against CURRENT (reports looked up under ``<home>/reports`` if moved)."""
    options = _options(options, margin, regression_tolerance)
    reports_dir = reports_dir if reports_dir is not None else Path(models_dir).parent / "reports"
    candidate_card = {"version": version, **read_card(version_dir(models_dir, version))}
    current = read_current(models_dir)
    current_card = None
    if current == version:
        return GateDecision(
            version, current, False, [f"{version} is already served"],
            margin=options.margin, regression_tolerance=options.regression_tolerance, options=options,
        )
    if current is not None:
        current_card = {"version": current, **read_card(version_dir(models_dir, current))}
    return check_gate(candidate_card, current_card, options=options, reports_dir=reports_dir, expected_set_ids=expected_set_ids)


def promote(
    models_dir: Path,
    version: str,
    *,
    force: bool = False,
    margin: float | None = None,
    regression_tolerance: float | None = None,
    options: GateOptions | None = None,
    reports_dir: Path | None = None,
    expected_set_ids: Mapping[str, str] | None = None,
) -> GateDecision:
    """Check the gate and, if it passes (or ``force``), switch CURRENT atomically. Returns the decision.

    The decision's figures and failed conditions go into the promoted version's card (``gate``) and a
    forced promotion records its overridden reasons in the history.
    """
    decision = decide(
        models_dir, version, margin=margin, regression_tolerance=regression_tolerance, options=options,
        reports_dir=reports_dir, expected_set_ids=expected_set_ids,
    )
    if decision.current == version:
        return decision
    if decision.passed or force:
        reason = "promote" if decision.passed else "promote --force: " + "; ".join(decision.reasons)
        writer.set_current(models_dir, version, reason=reason)
        gate = {
            "passed": decision.passed,
            "forced": not decision.passed,
            "against": decision.current,
            "reasons": decision.reasons,
            "conditions": [c.to_dict() for c in decision.conditions],
            "options": decision.options.to_dict(),
        }
        writer.update_card(models_dir, version, promoted=True, baseline_wer=decision.current_wer, baseline_version=decision.current, gate=gate)
    return decision


def gate_report_path(reports_dir: Path, candidate: str, current: str, suffix: str = "md") -> Path:
    """Where the gate's decision of ``candidate`` against ``current`` is written (``.md`` and ``.json``)."""
    stem = "gate-" + "-vs-".join("".join(c if c.isalnum() or c in "-_." else "_" for c in v) for v in (candidate, current))
    return Path(reports_dir) / f"{stem}.{suffix}"


def write_decision(decision: GateDecision, reports_dir: Path) -> Path | None:
    """``reports/gate-<candidate>-vs-<current>.md`` (and .json): the decision with its slice table."""
    if decision.current is None or decision.current == decision.candidate:
        return None
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    for suffix, text in (
        ("json", json.dumps(decision.to_dict(), indent=2, ensure_ascii=False) + "\n"),
        ("md", decision_markdown(decision)),
    ):
        path = gate_report_path(reports_dir, decision.candidate, decision.current, suffix)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return gate_report_path(reports_dir, decision.candidate, decision.current)


# ---------------------------------------------------------------------------------------------- CLI


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def format_versions(models_dir: Path) -> str:
    current = read_current(models_dir)
    lines = [f"{'':2}{'version':<24}{'created':<22}{'parent':<20}{'method':<8}{'clips':>6}{'test WER':>10}{'regr WER':>10}"]
    for version in list_versions(models_dir):
        card = read_card(Path(models_dir) / version)
        lines.append(
            f"{'*' if version == current else ' ':2}{version:<24}{str(card.get('created', ''))[:19]:<22}"
            f"{str(card.get('parent') or '-'):<20}{str(card.get('method') or '-'):<8}{card.get('train_clips') or 0:>6}"
            f"{_fmt(card.get('test_wer_normalised')):>10}{_fmt(card.get('regression_wer')):>10}"
        )
    if len(lines) == 1:
        lines.append("  (no versions: run `habla-ls models bootstrap`)")
    return "\n".join(lines)


@click.command("list")
@click.pass_obj
def list_command(settings: Any) -> None:
    """List model versions with their test and regression WERs; * marks the served one."""
    click.echo(format_versions(settings.models_dir))


def _expected_set_ids(regression_manifest: Path | None) -> dict[str, str]:
    """The id of the regression set a user named, so reports measured on another set count as stale."""
    if regression_manifest is None:
        return {}
    from training.dataset import read_manifest, split_id

    rows, _problems = read_manifest(Path(regression_manifest))
    return {REGRESSION_SET: split_id(rows)} if rows else {}


@click.command("promote")
@click.argument("version")
@click.option("--force", is_flag=True, help="Serve it even if the gate refuses (the failed conditions are recorded in the history and card).")
@click.option("--margin", type=float, default=DEFAULT_MARGIN, show_default=True,
              help="Relative test-WER improvement required (point estimate below -margin x current WER).")
@click.option("--regression-tolerance", type=float, default=DEFAULT_REGRESSION_TOLERANCE, show_default=True,
              help="Relative worsening allowed on each regression slice.")
@click.option("--regression-floor", type=float, default=DEFAULT_REGRESSION_FLOOR, show_default=True,
              help="Absolute WER worsening always allowed on a regression slice (a few words on a low WER are noise).")
@click.option("--confidence", type=click.FloatRange(0.5, 0.999), default=DEFAULT_CONFIDENCE, show_default=True,
              help="Level of the bootstrap intervals.")
@click.option("--min-slice-words", type=click.IntRange(min=1), default=DEFAULT_MIN_SLICE_WORDS, show_default=True,
              help="Regression slices with fewer reference words are reported but not decided.")
@click.option("--resamples", type=click.IntRange(min=100), default=DEFAULT_RESAMPLES, show_default=True,
              help="Bootstrap resamples.")
@click.option("--regression-manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Standard-speech regression set to judge on (default: the regression_manifest setting, else the generated set).")
@click.option("--evaluate/--no-evaluate", "run_evaluate", default=True, show_default=True,
              help="Evaluate both versions on the same clips first when their reports do not compare.")
@click.pass_obj
def promote_command(
    settings: Any, version: str, force: bool, margin: float, regression_tolerance: float, regression_floor: float,
    confidence: float, min_slice_words: int, resamples: int, regression_manifest: Path | None, run_evaluate: bool,
) -> None:
    """Serve VERSION if it is credibly better on the test split and keeps standard speech.

    \b
    Both versions are compared utterance by utterance on the same clips; a paired
    bootstrap over sessions (test split) or speakers (regression set) gives an interval
    of each WER difference, candidate - current (utterances are resampled when there
    are fewer than 8 sessions/speakers). VERSION is promoted only when
      1. test: the difference is below -margin x current WER and its interval's upper
         bound is below 0 (a credible improvement), and
      2. regression: no slice (overall, each voice family, each voice/speaker, quiet
         speech) is worse by more than max(tolerance x its WER, floor) with its
         interval's lower bound above 0. Slices under --min-slice-words reference
         words are reported, not decided (overall always is).

    Every failed condition is printed on its own line; the slice table goes to
    <home>/reports/gate-VERSION-vs-CURRENT.md. The backend picks the new CURRENT up
    on its next request; `habla-ls models rollback` undoes it.
    """
    from training.gate import GateOptions

    models_dir = settings.models_dir
    regression_manifest = regression_manifest or getattr(settings, "regression_manifest", None)
    options = GateOptions(
        margin=margin, regression_tolerance=regression_tolerance, regression_floor=regression_floor,
        confidence=confidence, min_slice_words=min_slice_words, resamples=resamples,
    )
    gate_args = {"options": options, "reports_dir": settings.reports_dir, "expected_set_ids": _expected_set_ids(regression_manifest)}
    try:
        decision = decide(models_dir, version, **gate_args)
        if run_evaluate and decision.needs_evaluation and decision.current not in (None, version):
            from training.evaluate import EvaluateError, ensure_evaluated

            click.echo(f"evaluating {version} and {decision.current} on the same clips first ...")
            try:
                ensure_evaluated(settings, [version, decision.current], regression_manifest=regression_manifest)
            except EvaluateError as exc:
                raise click.ClickException(str(exc)) from exc
        decision = promote(models_dir, version, force=force, **gate_args)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    report = write_decision(decision, settings.reports_dir)
    if ESPEAK_ONLY_NOTE in decision.notes:
        click.echo(ESPEAK_ONLY_NOTE)
    for reason in decision.reasons:
        click.echo(f"  {reason}")
    if report is not None:
        click.echo(f"slice table: {report}")
    if decision.current == version:
        click.echo(f"{version} is already served")
    elif decision.passed:
        click.echo(f"promoted {version} (was {decision.current or 'nothing'})")
    elif force:
        click.echo(f"promoted {version} with --force despite the gate (was {decision.current})")
    else:
        failed = len(decision.failures) or len(decision.reasons)
        raise click.ClickException(f"{version} not promoted: the gate refused it ({failed} failed) — use --force to override")


@click.command("rollback")
@click.pass_obj
def rollback_command(settings: Any) -> None:
    """Serve again the version that was served before the current one."""
    try:
        previous = read_current(settings.models_dir)
        now = writer.rollback(settings.models_dir)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rolled back: {previous} -> {now}")
