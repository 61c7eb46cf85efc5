"""The promotion gate applied to the registry: decide, promote, the gate's report, the list of versions.

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

from ml_backend.registry import PRUNED_FIELD, list_versions, read_card, read_current, version_dir
from training import registry as writer
from training.gate import GateDecision, GateOptions, judge
from training.gate_report import decision_markdown
from training.paired_sets import REGRESSION_SET

log = logging.getLogger(__name__)

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


def check_gate(
    candidate_card: dict[str, Any],
    current_card: dict[str, Any] | None,
    *,
    options: GateOptions | None = None,
    reports_dir: Path | None = None,
    expected_set_ids: Mapping[str, str] | None = None,
) -> GateDecision:
    """Decide from two model cards (``version`` key included) through the reports they point at.

    Every failed condition is one line of ``reasons``; ``conditions`` holds the machine-readable figures.
    """
    options = options or GateOptions()
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
            needs_evaluation=True, options=options,
        )
    return judge(reports[candidate], reports[current], options, candidate=candidate, current=current, expected_set_ids=expected_set_ids)


def decide(
    models_dir: Path,
    version: str,
    *,
    options: GateOptions | None = None,
    reports_dir: Path | None = None,
    expected_set_ids: Mapping[str, str] | None = None,
) -> GateDecision:
    """The gate for ``version`` against CURRENT (reports looked up under ``<home>/reports`` if moved)."""
    options = options or GateOptions()
    reports_dir = reports_dir if reports_dir is not None else Path(models_dir).parent / "reports"
    candidate_card = {"version": version, **read_card(version_dir(models_dir, version))}
    current = read_current(models_dir)
    current_card = None
    if current == version:
        return GateDecision(
            version, current, False, [f"{version} is already served"],
            options=options,
        )
    if current is not None:
        current_card = {"version": current, **read_card(version_dir(models_dir, current))}
    return check_gate(candidate_card, current_card, options=options, reports_dir=reports_dir, expected_set_ids=expected_set_ids)


def promote(
    models_dir: Path,
    version: str,
    *,
    force: bool = False,
    options: GateOptions | None = None,
    reports_dir: Path | None = None,
    expected_set_ids: Mapping[str, str] | None = None,
) -> GateDecision:
    """Check the gate and, if it passes (or ``force``), switch CURRENT atomically. Returns the decision.

    The decision's figures and failed conditions go into the promoted version's card (``gate``) and a
    forced promotion records its overridden reasons in the history.
    """
    decision = decide(
        models_dir, version, options=options, reports_dir=reports_dir, expected_set_ids=expected_set_ids,
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


# ---------------------------------------------------------------------------------------------- listing


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
            + ("  (weights pruned)" if card.get(PRUNED_FIELD) else "")
        )
    if len(lines) == 1:
        lines.append("  (no versions: run `habla-ls models bootstrap`)")
    return "\n".join(lines)


def expected_set_ids(regression_manifest: Path | None) -> dict[str, str]:
    """The id of the regression set a user named, so reports measured on another set count as stale."""
    if regression_manifest is None:
        return {}
    from training.manifest import read_manifest, split_id

    rows, _problems = read_manifest(Path(regression_manifest))
    return {REGRESSION_SET: split_id(rows)} if rows else {}
