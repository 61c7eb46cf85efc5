"""The page's word checks, measured on the corrections and written into the tasks.

:func:`measure` pairs every corrected task with the words (their probabilities and token counts) of each
model version that predicted it before the correction, and asks :mod:`training.word_checks` for P(word
wrong) learnt from them, the threshold (the most wrong words marked with at most a quarter of all words
marked), each version's recall and marked share at it, and the same measured out of fold with the
calibration of "how many words are likely wrong".
The result (the fitted scorer among it) goes to ``<home>/reports/word-checks.json`` (``habla-ls status``
shows it) and the reliability plot to ``word-checks-reliability.png``.

:func:`write_page_checks` then gives every unlabelled task the checks of the version that prefills the
page (:mod:`sync.page_checks`): so the marks always belong to the transcript the annotator sees, after a
round, a promotion or a rollback alike. When Habla's transcript prefills, there are no model words to
mark and the checks are empty.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from habla_ls.config import Settings
from habla_ls.corrections import CorrectedTask
from habla_ls.served_model import ServedModel, is_labelled, task_sha
from ml_backend.prediction_cache import WORDS_META, PredictionCache, cache_path
from ml_backend.registry import list_versions
from sync.labelling_config import DATA_CHECK_TEXT, DATA_CHECK_WORDS, DATA_CONFIDENCE, EMPTY_CHECKS
from sync.ls_client import LabelStudioClient
from sync.page_checks import PageWord, likely_wrong_text, page_checks, words_from_meta
from training.calibration import reliability_plot
from training.word_checks import (
    MIN_CALIBRATION_WORDS,
    CheckedTranscript,
    WordCheckFit,
    fit_checks,
    mark_point,
)

log = logging.getLogger(__name__)

REPORT_FILE = "word-checks.json"
PLOT_FILE = "word-checks-reliability.png"


@dataclass(frozen=True)
class VersionChecks:
    version: str
    tasks: int
    words: int
    wrong: int
    recall: float | None  # share of its wrong words marked at the threshold
    marked_share: float | None  # share of its words marked


@dataclass
class WordChecks:
    fit: WordCheckFit
    versions: list[VersionChecks] = field(default_factory=list)
    measured_at: str = ""

    @property
    def threshold(self) -> float:
        return self.fit.threshold

    @property
    def words(self) -> int:
        return self.fit.words

    def wrong_probabilities(self, words: Sequence[PageWord]) -> list[float]:
        return self.fit.word_scores(words)

    def to_dict(self) -> dict[str, Any]:
        return {"fit": self.fit.to_dict(), "versions": [asdict(v) for v in self.versions], "measured_at": self.measured_at,
                "min_calibration_words": MIN_CALIBRATION_WORDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordChecks:
        return cls(WordCheckFit.from_dict(data["fit"]), [VersionChecks(**v) for v in data.get("versions") or []],
                   str(data.get("measured_at") or ""))

    def lines(self) -> list[str]:
        """For ``habla-ls status``: the marks' recall against words marked per version, out of fold, the calibration."""
        fit = self.fit
        if not fit.calibrated:
            return [
                f"word checks: words below probability {1 - fit.threshold:.2f} are marked; 'likely wrong' is not "
                f"calibrated yet ({fit.words} of {MIN_CALIBRATION_WORDS} corrected words needed)"
            ]
        out = [
            f"word checks: learnt from {fit.words} corrected words ({fit.wrong} wrong); a word is marked from "
            f"P(wrong) {fit.threshold:.2f} (the most wrong words with at most a quarter of all words marked)"
        ]
        for v in self.versions:
            recall = "-" if v.recall is None else f"{100 * v.recall:.0f} %"
            share = "-" if v.marked_share is None else f"{100 * v.marked_share:.0f} %"
            out.append(f"  {v.version:<28} {v.tasks:>4} tasks {v.words:>6} words {v.wrong:>5} wrong: "
                       f"{recall} of the wrong words marked, {share} of all words marked")
        recall = "-" if fit.folds_recall is None else f"{100 * fit.folds_recall:.0f} %"
        share = "-" if fit.folds_marked_share is None else f"{100 * fit.folds_marked_share:.0f} %"
        error = "-" if fit.folds_error is None else f"{fit.folds_error:.3f}"
        out.append(f"  out of fold (each task scored by a fit on the others): {recall} of the wrong words marked, "
                   f"{share} of all words marked; 'likely wrong' calibration error {error} (reports/{PLOT_FILE})")
        return out


def _version_words(models_dir: Path, version: str, shas: Sequence[str], cache: PredictionCache) -> dict[str, list[PageWord]]:
    """sha -> the version's words for that clip, from the prediction cache (what the page was prefilled with)."""
    try:
        model = ServedModel(models_dir / version, "es")
    except Exception as exc:  # noqa: BLE001 - a version deleted or unloadable: nothing of it to measure
        log.debug("word checks: %s unusable (%s)", version, exc)
        return {}
    found = cache.get_many(list(shas), version, model.fingerprint)
    return {sha: words_from_meta(p.meta.get(WORDS_META)) for sha, p in found.items() if WORDS_META in p.meta}


def measure(settings: Settings, tasks: Sequence[CorrectedTask]) -> WordChecks:
    """The checks learnt from ``tasks``; saved in ``reports/`` with the reliability plot."""
    versions = set(list_versions(settings.models_dir))
    by_version: dict[str, list[CheckedTranscript]] = {}
    cache = PredictionCache(cache_path(settings.home))
    try:
        for version in sorted({v for t in tasks for v in t.predictions} & versions):
            having = [t for t in tasks if version in t.predictions and t.sha256]
            words = _version_words(settings.models_dir, version, [t.sha256 for t in having], cache)
            for t in having:
                clip_words = words.get(t.sha256) or []
                if clip_words:
                    checked = CheckedTranscript.from_words(f"{t.task_id}/{version}", clip_words, t.reference)
                    by_version.setdefault(version, []).append(checked)
    finally:
        cache.close()
    fit = fit_checks([s for group in by_version.values() for s in group])
    checks = WordChecks(fit, measured_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    for version, group in sorted(by_version.items()):
        # Each word scored as the threshold was chosen: without its own verdict in its correction rate.
        pairs = [(p, bad) for s in group for p, bad in zip(fit.learnt_scores(s), s.wrong, strict=True)]
        point = mark_point(pairs, fit.threshold)
        checks.versions.append(VersionChecks(
            version, len(group), len(pairs), sum(bad for _, bad in pairs),
            None if math.isnan(point.recall) else round(point.recall, 4),
            None if math.isnan(point.marked_share) else round(point.marked_share, 4),
        ))
    save(settings.reports_dir, checks)
    return checks


def save(reports_dir: Path, checks: WordChecks) -> None:
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / REPORT_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(checks.to_dict(), indent=1) + "\n")
    tmp.replace(path)
    if checks.fit.reliability:
        reliability_plot(checks.fit.reliability, checks.fit.folds_error, checks.fit.words, reports_dir / PLOT_FILE, "P(word wrong) on the page, against the corrections")


def read_report(reports_dir: Path) -> tuple[WordChecks | None, str | None]:
    """The saved word checks, or why there are none to show (None: never measured)."""
    path = reports_dir / REPORT_FILE
    try:
        return WordChecks.from_dict(json.loads(path.read_text())), None
    except FileNotFoundError:
        return None, None
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"{path}: unreadable ({exc}); the next round measures them again"


def write_page_checks(
    settings: Settings, client: LabelStudioClient, project_id: int, prefill: str | None, checks: WordChecks
) -> int:
    """Gives every unlabelled task the checks of ``prefill`` (empty unless it is a model version with words);
    returns how many tasks changed."""
    tasks = [t for t in client.iter_tasks(project_id, all_fields=True) if not is_labelled(t)]
    wanted: dict[int, dict[str, Any]] = {}
    words: dict[str, list[PageWord]] = {}
    confidences: dict[str, float] = {}
    if prefill and prefill in list_versions(settings.models_dir):
        cache = PredictionCache(cache_path(settings.home))
        try:
            shas = [task_sha(t) for t in tasks if task_sha(t)]
            words = _version_words(settings.models_dir, prefill, shas, cache)
            model = ServedModel(settings.models_dir / prefill, settings.language)
            confidences = {sha: float(p.score or 0.0) for sha, p in cache.get_many(shas, prefill, model.fingerprint).items()}
        finally:
            cache.close()
    for task in tasks:
        sha = task_sha(task)
        if sha in words and prefill:
            clip_words = words[sha]
            wrong = checks.wrong_probabilities(clip_words)
            expected = sum(wrong) if checks.fit.calibrated else None
            line = likely_wrong_text(expected, len(clip_words), prefill, calibrated_on=checks.words,
                                     needed=MIN_CALIBRATION_WORDS, confidence=confidences.get(sha, 0.0))
            wanted[int(task["id"])] = page_checks(clip_words, wrong, checks.threshold, prefill, line)
        else:
            wanted[int(task["id"])] = {**EMPTY_CHECKS, DATA_CONFIDENCE: ""}
    changed = 0
    for task in tasks:
        data = task.get("data") or {}
        new = wanted[int(task["id"])]
        if any(data.get(k) != new[k] for k in (DATA_CHECK_TEXT, DATA_CHECK_WORDS, DATA_CONFIDENCE)):
            # The listing's data, not a fresh read: reading a task makes Label Studio ask the ML backend for a
            # prediction it lacks, which would decode every task here.
            client.patch_task_data(int(task["id"]), {**data, **new})
            changed += 1
    return changed
