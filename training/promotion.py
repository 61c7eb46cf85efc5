"""The promotion gate, and ``habla-ls models list / promote / rollback``.

A version is served (``CURRENT`` switched atomically, so the backend hot-swaps it) only when

1. its normalised WER on the fixed test split beats CURRENT's by a relative margin (default 2 %), and
2. its WER on the standard-Spanish regression set is not worse than CURRENT's by more than a relative
   tolerance (default 5 %) — a model that learnt the accent and forgot the language is refused;

unless ``--force``. Both WERs must come from the same test split and regression set (their ids are in
the model cards), else the comparison is refused: figures from different audio do not compare.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click

from ml_backend.registry import RegistryError, list_versions, read_card, read_current, version_dir
from training import registry as writer

log = logging.getLogger(__name__)

DEFAULT_MARGIN = 0.02
DEFAULT_REGRESSION_TOLERANCE = 0.05


@dataclass(frozen=True)
class GateDecision:
    candidate: str
    current: str | None
    passed: bool
    reasons: list[str] = field(default_factory=list)
    candidate_wer: float | None = None
    current_wer: float | None = None
    candidate_regression_wer: float | None = None
    current_regression_wer: float | None = None
    margin: float = DEFAULT_MARGIN
    regression_tolerance: float = DEFAULT_REGRESSION_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _figure(card: dict[str, Any], name: str) -> float | None:
    value = card.get(name)
    return float(value) if isinstance(value, int | float) else None


def check_gate(
    candidate_card: dict[str, Any],
    current_card: dict[str, Any] | None,
    *,
    margin: float = DEFAULT_MARGIN,
    regression_tolerance: float = DEFAULT_REGRESSION_TOLERANCE,
) -> GateDecision:
    """Decide from two model cards; every failed condition is named in ``reasons``."""
    candidate = candidate_card.get("version", "?")
    if current_card is None:
        return GateDecision(candidate, None, True, ["nothing is served yet"], margin=margin, regression_tolerance=regression_tolerance)
    current = current_card.get("version", "?")
    cand_wer, cur_wer = _figure(candidate_card, "test_wer_normalised"), _figure(current_card, "test_wer_normalised")
    cand_reg, cur_reg = _figure(candidate_card, "regression_wer"), _figure(current_card, "regression_wer")
    reasons: list[str] = []
    passed = True

    if cand_wer is None or cur_wer is None:
        passed = False
        missing = [v for v, w in ((candidate, cand_wer), (current, cur_wer)) if w is None]
        reasons.append(f"no test WER for {', '.join(missing)}: run `habla-ls evaluate`")
    elif candidate_card.get("test_split_id") != current_card.get("test_split_id"):
        passed = False
        reasons.append("test WERs come from different test splits: re-evaluate both (`habla-ls evaluate A B`)")
    else:
        needed = cur_wer * (1.0 - margin)
        if cand_wer < needed:
            reasons.append(f"test WER {cand_wer:.4f} beats {cur_wer:.4f} by more than {margin:.0%} (needed < {needed:.4f})")
        else:
            passed = False
            reasons.append(f"test WER {cand_wer:.4f} does not beat {cur_wer:.4f} by {margin:.0%} (needed < {needed:.4f})")

    if cand_reg is None or cur_reg is None:
        passed = False
        missing = [v for v, w in ((candidate, cand_reg), (current, cur_reg)) if w is None]
        reasons.append(f"no regression-set WER for {', '.join(missing)}: run `habla-ls evaluate`")
    elif candidate_card.get("regression_set_id") != current_card.get("regression_set_id"):
        passed = False
        reasons.append("regression WERs come from different regression sets: re-evaluate both")
    else:
        allowed = cur_reg * (1.0 + regression_tolerance)
        if cand_reg <= allowed:
            reasons.append(f"regression WER {cand_reg:.4f} within {regression_tolerance:.0%} of {cur_reg:.4f}")
        else:
            passed = False
            reasons.append(
                f"regression WER {cand_reg:.4f} worse than {cur_reg:.4f} by more than {regression_tolerance:.0%} "
                f"(allowed <= {allowed:.4f}): the model forgets standard Spanish"
            )
    return GateDecision(
        candidate, current, passed, reasons, cand_wer, cur_wer, cand_reg, cur_reg, margin, regression_tolerance
    )


def decide(
    models_dir: Path,
    version: str,
    *,
    margin: float = DEFAULT_MARGIN,
    regression_tolerance: float = DEFAULT_REGRESSION_TOLERANCE,
) -> GateDecision:
    candidate_card = {"version": version, **read_card(version_dir(models_dir, version))}
    current = read_current(models_dir)
    current_card = None
    if current is not None and current != version:
        current_card = {"version": current, **read_card(version_dir(models_dir, current))}
    elif current == version:
        return GateDecision(version, current, False, [f"{version} is already served"], margin=margin, regression_tolerance=regression_tolerance)
    return check_gate(candidate_card, current_card, margin=margin, regression_tolerance=regression_tolerance)


def promote(
    models_dir: Path,
    version: str,
    *,
    force: bool = False,
    margin: float = DEFAULT_MARGIN,
    regression_tolerance: float = DEFAULT_REGRESSION_TOLERANCE,
) -> GateDecision:
    """Check the gate and, if it passes (or ``force``), switch CURRENT atomically. Returns the decision."""
    decision = decide(models_dir, version, margin=margin, regression_tolerance=regression_tolerance)
    if decision.current == version:
        return decision
    if decision.passed or force:
        reason = "promote" if decision.passed else "promote --force: " + "; ".join(decision.reasons)
        writer.set_current(models_dir, version, reason=reason)
        writer.update_card(models_dir, version, promoted=True, baseline_wer=decision.current_wer)
    return decision


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


@click.command("promote")
@click.argument("version")
@click.option("--force", is_flag=True, help="Serve it even if the gate refuses (the reasons are recorded in the history).")
@click.option("--margin", type=float, default=DEFAULT_MARGIN, show_default=True, help="Relative test-WER improvement required.")
@click.option(
    "--regression-tolerance",
    type=float,
    default=DEFAULT_REGRESSION_TOLERANCE,
    show_default=True,
    help="Relative worsening allowed on the standard-Spanish regression set.",
)
@click.option("--evaluate/--no-evaluate", "run_evaluate", default=True, show_default=True, help="Evaluate versions that lack test/regression WERs first.")
@click.pass_obj
def promote_command(settings: Any, version: str, force: bool, margin: float, regression_tolerance: float, run_evaluate: bool) -> None:
    """Serve VERSION if it beats the served model on the test split and keeps standard Spanish.

    The backend picks the new CURRENT up on its next request; `habla-ls models rollback` undoes it.
    """
    models_dir = settings.models_dir
    try:
        decision = decide(models_dir, version, margin=margin, regression_tolerance=regression_tolerance)
        if run_evaluate and decision.current is not None and decision.current != version and not decision.passed:
            stale = [r for r in decision.reasons if r.startswith("no ") or "different" in r]
            if stale:
                from training.evaluate import ensure_evaluated

                click.echo(f"evaluating {version} and {decision.current} on the same test split first ...")
                ensure_evaluated(settings, [version, decision.current])
        decision = promote(models_dir, version, force=force, margin=margin, regression_tolerance=regression_tolerance)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    for reason in decision.reasons:
        click.echo(f"  {reason}")
    if decision.current == version:
        click.echo(f"{version} is already served")
    elif decision.passed:
        click.echo(f"promoted {version} (was {decision.current or 'nothing'})")
    elif force:
        click.echo(f"promoted {version} with --force despite the gate (was {decision.current})")
    else:
        raise click.ClickException(f"{version} not promoted: the gate refused it (use --force to override)")


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
