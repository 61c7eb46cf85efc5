"""The learning curve ``habla-ls status`` shows: each version's WER by the corrections it was trained on.

Two figures per version, both from its last evaluation (``reports/<version>.json``, the same the gate
reads): the accent, on the test split of your own held-out sessions (it grows as you correct, so each
version's figure is on the split of its last evaluation: the served one is evaluated again at every
finish), and standard Spanish, on the regression set of voices no version trained on. The root version
(whisper-base) sits at 0 corrections. Written as a table and as ``reports/learning-curve.png``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ml_backend.registry import PRUNED_FIELD, list_versions, read_card, read_current
from training.eval_report import report_paths
from training.paired_sets import REGRESSION_SET, TEST_SET

PLOT_FILE = "learning-curve.png"


@dataclass(frozen=True)
class CurvePoint:
    version: str
    corrections: int
    test_wer: float | None  # your held-out sessions (the accent)
    test_clips: int | None
    regression_wer: float | None  # standard Spanish, held-out voices
    served: bool
    promoted: bool  # ever served through the gate (or forced)
    test_split: str | None = None  # the id of the test split its figure is on (None: not known)
    pruned: bool = False  # weights removed (`models prune`): it cannot be evaluated again


def _corrections(card: dict[str, Any]) -> int:
    if card.get("corrections") is not None:
        return int(card["corrections"])
    if not card.get("parent"):
        return 0
    return sum(int(card.get(k) or 0) for k in ("train_clips", "validation_clips", "test_clips"))


def _report(reports_dir: Path, version: str) -> dict[str, Any]:
    try:
        return json.loads(report_paths(version, reports_dir)["json"].read_text())
    except (OSError, ValueError):
        return {}


def curve(models_dir: Path, reports_dir: Path) -> list[CurvePoint]:
    """Every version with an evaluation, by corrections (then by creation)."""
    served = read_current(models_dir)
    points = []
    for version in list_versions(models_dir):
        card = read_card(models_dir / version)
        report = _report(reports_dir, version)
        sets = report.get("sets") or {}
        test, regression = sets.get(TEST_SET) or {}, sets.get(REGRESSION_SET) or {}
        test_wer = (test.get("levels") or {}).get("normalised", {}).get("wer", card.get("test_wer_normalised"))
        regression_wer = (regression.get("levels") or {}).get("normalised", {}).get("wer", card.get("regression_wer"))
        if test_wer is None and regression_wer is None:
            continue
        points.append(CurvePoint(
            version, _corrections(card), test_wer, test.get("utterances", card.get("test_clips")), regression_wer,
            version == served, bool(card.get("promoted")) or not card.get("parent"),
            (report.get("set_ids") or {}).get(TEST_SET) if test else None, bool(card.get(PRUNED_FIELD)),
        ))
    return sorted(points, key=lambda p: (p.corrections, p.version))


def lines(points: list[CurvePoint]) -> list[str]:
    if not points:
        return ["learning curve: no version evaluated yet (`habla-ls finish` evaluates each new one)"]
    out = [f"learning curve (WER by corrections; plot in reports/{PLOT_FILE}):",
           f"    {'version':<28}{'corrections':>12}{'your sessions':>15}{'standard':>10}"]
    for p in points:
        mark = "*" if p.served else ("+" if p.promoted else " ")
        test = "-" if p.test_wer is None else f"{p.test_wer:.3f}"
        clips = f" ({p.test_clips})" if p.test_clips else ""
        standard = "-" if p.regression_wer is None else f"{p.regression_wer:.3f}"
        out.append(f"  {mark} {p.version:<28}{p.corrections:>12}{test + clips:>15}{standard:>10}")
    out.append("    (* served, + served before; your sessions: the test split of its last evaluation, clips in brackets)")
    measured = [p for p in points if p.test_wer is not None]
    splits = {p.test_split for p in measured}
    again = [p.version for p in measured if not p.pruned]
    if len(splits) > 1 and len(again) > 1:
        # Each finish evaluates only its candidate and the served version; older figures stay on older splits.
        out.append(f"    your sessions' figures come from {len(splits)} different test splits, so they do not compare "
                   f"down the column: `habla-ls evaluate {' '.join(again)}` puts "
                   f"{'these versions' if len(again) < len(measured) else 'every version'} on today's split")
    return out


def plot(points: list[CurvePoint], path: Path) -> Path | None:
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for attr, label, style in (("test_wer", "your held-out sessions (accent)", "o-"), ("regression_wer", "standard Spanish (held-out voices)", "s--")):
        shown = [p for p in points if getattr(p, attr) is not None]
        ax.plot([p.corrections for p in shown], [100 * getattr(p, attr) for p in shown], style, label=label)
    for p in points:
        if p.served and p.test_wer is not None:
            ax.annotate(f"{p.version} (served)", (p.corrections, 100 * p.test_wer), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xlabel("corrections the version was trained on")
    ax.set_ylabel("WER (%)")
    ax.set_title("habla-ls learning curve")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def to_dicts(points: list[CurvePoint]) -> list[dict[str, Any]]:
    return [asdict(p) for p in points]


def from_dicts(rows: list[dict[str, Any]]) -> list[CurvePoint]:
    """The points :func:`to_dicts` wrote (``habla-ls status --json``'s ``learning_curve``)."""
    return [CurvePoint(**row) for row in rows]
