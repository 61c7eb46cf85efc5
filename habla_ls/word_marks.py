"""The page's word checks, measured on the corrections and written into the tasks.

:func:`measure` pairs every corrected task with the words (their probabilities and token counts) of each
model version that predicted it before the correction, and asks :mod:`training.word_checks` for P(word
wrong) learnt from them, each version's recall and marked share with a quarter of its words marked (the
page's rule), and the same measured out of fold with the calibration of "how many words are likely wrong".

:func:`write_page_checks` then gives every unlabelled task the checks of the version that prefills the
page (:mod:`sync.page_checks`): so the marks always belong to the transcript the annotator sees, after a
round, a promotion or a rollback alike. The threshold is set there, on that version's words of the next
:data:`LOOK_AHEAD_TASKS` tasks in the round's order: the cut that marks a quarter of them
(:func:`training.word_checks.page_threshold`). When Habla's transcript prefills, there are no model words
to mark and the checks are empty. :func:`save_report` then writes it all (the fitted scorer and the pages'
cut among it) to ``<home>/reports/word-checks.json``, which ``habla-ls status`` shows, and the reliability
plot to ``word-checks-reliability.png``.
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
from ml_backend.prediction_cache import WORDS_META, CachedPrediction, PredictionCache, cache_path
from ml_backend.registry import list_versions
from sync.labelling_config import (
    DATA_CHECK_TEXT,
    DATA_CHECK_WORDS,
    DATA_CONFIDENCE,
    DATA_PRIORITY,
    EMPTY_CHECKS,
)
from sync.ls_client import LabelStudioClient
from sync.page_checks import PageWord, likely_wrong_text, page_checks, words_from_meta
from training.calibration import reliability_plot
from training.word_checks import (
    MIN_CALIBRATION_WORDS,
    CheckedTranscript,
    WordCheckFit,
    fit_checks,
    mark_point,
    page_threshold,
)

log = logging.getLogger(__name__)

REPORT_FILE = "word-checks.json"
PLOT_FILE = "word-checks-reliability.png"
# The pages whose words set the marks' threshold: the next tasks in the round's order, about one round of
# corrections. A round puts the doubtful tasks first, so all unlabelled tasks would set a cut that marks
# more than a quarter of what is corrected next (30-32 % in `bench/term`'s `diverse` rounds: bench/README.md).
LOOK_AHEAD_TASKS = 50


@dataclass(frozen=True)
class VersionChecks:
    version: str
    tasks: int
    words: int
    wrong: int
    recall: float | None  # share of its wrong words marked at the threshold
    marked_share: float | None  # share of its words marked


@dataclass(frozen=True)
class PageMarks:
    """The threshold the unlabelled tasks' pages were last marked with, and what it was set on."""

    version: str  # the version whose words are marked
    threshold: float
    tasks: int  # the look-ahead: the next tasks in the round's order with that version's words
    words: int
    marked_share: float  # of the look-ahead's words


@dataclass
class WordChecks:
    fit: WordCheckFit
    versions: list[VersionChecks] = field(default_factory=list)
    measured_at: str = ""
    page: PageMarks | None = None

    @property
    def words(self) -> int:
        return self.fit.words

    def wrong_probabilities(self, words: Sequence[PageWord]) -> list[float]:
        return self.fit.word_scores(words)

    def to_dict(self) -> dict[str, Any]:
        return {"fit": self.fit.to_dict(), "versions": [asdict(v) for v in self.versions], "measured_at": self.measured_at,
                "min_calibration_words": MIN_CALIBRATION_WORDS, "page": None if self.page is None else asdict(self.page)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WordChecks:
        page = data.get("page")
        return cls(WordCheckFit.from_dict(data["fit"]), [VersionChecks(**v) for v in data.get("versions") or []],
                   str(data.get("measured_at") or ""), PageMarks(**page) if page else None)

    def page_line(self) -> str | None:
        page = self.page
        if page is None:
            return None
        score = "P(wrong)" if self.fit.calibrated else "the model's doubt (1 - its probability)"
        return (f"  the pages mark {page.version}'s words from {score} {page.threshold:.2f}: a quarter of its "
                f"{page.words} words on the next {page.tasks} task(s) to correct ({100 * page.marked_share:.0f} % marked)")

    def lines(self) -> list[str]:
        """For ``habla-ls status``: the marks' recall against words marked per version, out of fold, the calibration."""
        fit = self.fit
        page = [line] if (line := self.page_line()) else []
        if not fit.calibrated:
            return [
                f"word checks: each page marks the words the model is least sure of, a quarter of the next tasks' words; 'likely wrong' is not "
                f"calibrated yet ({fit.words} of {MIN_CALIBRATION_WORDS} corrected words needed)", *page,
            ]
        out = [
            f"word checks: learnt from {fit.words} corrected words ({fit.wrong} wrong); each page marks the words most "
            f"likely wrong, a quarter of the words of the next tasks to correct",
            *page,
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


def version_predictions(models_dir: Path, version: str, shas: Sequence[str], cache: PredictionCache) -> dict[str, CachedPrediction]:
    """sha -> the version's cached prediction of that clip with its timed words (what the page was
    prefilled with); nothing for a version that is gone or cannot be loaded."""
    try:
        model = ServedModel(models_dir / version, "es")
    except Exception as exc:  # noqa: BLE001 - a version deleted or unloadable: nothing of it to measure
        log.debug("word checks: %s unusable (%s)", version, exc)
        return {}
    found = cache.get_many(list(shas), version, model.fingerprint)
    return {sha: p for sha, p in found.items() if WORDS_META in p.meta}


def version_words(models_dir: Path, version: str, shas: Sequence[str], cache: PredictionCache) -> dict[str, list[PageWord]]:
    """sha -> the version's words of that clip, as the page shows them (:func:`version_predictions`)."""
    return {sha: words_from_meta(p.meta[WORDS_META]) for sha, p in version_predictions(models_dir, version, shas, cache).items()}


def measure(settings: Settings, tasks: Sequence[CorrectedTask]) -> WordChecks:
    """The checks learnt from ``tasks`` (:func:`save_report` keeps them, once the pages have their cut)."""
    versions = set(list_versions(settings.models_dir))
    by_version: dict[str, list[CheckedTranscript]] = {}
    cache = PredictionCache(cache_path(settings.home))
    try:
        for version in sorted({v for t in tasks for v in t.predictions} & versions):
            having = [t for t in tasks if version in t.predictions and t.sha256]
            words = version_words(settings.models_dir, version, [t.sha256 for t in having], cache)
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
        # Each word scored without its own verdict in its correction rate, and marked by the page's rule on
        # the version's corrected tasks: the pages that were corrected.
        pairs = [(p, bad) for s in group for p, bad in zip(fit.learnt_scores(s), s.wrong, strict=True)]
        point = mark_point(pairs, page_threshold([p for p, _ in pairs]))
        checks.versions.append(VersionChecks(
            version, len(group), len(pairs), sum(bad for _, bad in pairs),
            None if math.isnan(point.recall) else round(point.recall, 4),
            None if math.isnan(point.marked_share) else round(point.marked_share, 4),
        ))
    return checks


def save_report(reports_dir: Path, checks: WordChecks) -> None:
    """``reports/word-checks.json`` (what ``habla-ls status`` shows) and the reliability plot."""
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


def look_ahead(tasks: Sequence[dict[str, Any]], count: int = LOOK_AHEAD_TASKS) -> list[dict[str, Any]]:
    """The first ``count`` of ``tasks`` in the round's order (``data.priority``; tasks a round has not ranked
    last, by id)."""
    def order(task: dict[str, Any]) -> tuple[float, int]:
        priority = (task.get("data") or {}).get(DATA_PRIORITY)
        return (float(priority) if isinstance(priority, int | float) else math.inf, int(task["id"]))
    return sorted(tasks, key=order)[:count]


def write_page_checks(
    settings: Settings, client: LabelStudioClient, project_id: int, prefill: str | None, checks: WordChecks
) -> int:
    """Gives every unlabelled task the checks of ``prefill`` (empty unless it is a model version with words),
    marked from the threshold set on the next tasks to correct (:func:`look_ahead`), and records that cut in
    ``checks.page``; returns how many tasks changed."""
    tasks = [t for t in client.iter_tasks(project_id, all_fields=True) if not is_labelled(t)]
    found: dict[str, CachedPrediction] = {}
    version = prefill or ""
    if version in list_versions(settings.models_dir):
        cache = PredictionCache(cache_path(settings.home))
        try:
            found = version_predictions(settings.models_dir, version, [sha for t in tasks if (sha := task_sha(t))], cache)
        finally:
            cache.close()
    predicted = {int(t["id"]): found[sha] for t in tasks if (sha := task_sha(t)) in found}
    words = {task_id: words_from_meta(p.meta[WORDS_META]) for task_id, p in predicted.items()}
    wrong = {task_id: checks.wrong_probabilities(clip_words) for task_id, clip_words in words.items()}
    ahead = look_ahead([t for t in tasks if int(t["id"]) in wrong])
    ahead_scores = [p for t in ahead for p in wrong[int(t["id"])]]
    threshold = page_threshold(ahead_scores)
    changed = 0
    for task in tasks:
        task_id = int(task["id"])
        if task_id in wrong:
            expected = sum(wrong[task_id]) if checks.fit.calibrated else None
            line = likely_wrong_text(expected, len(words[task_id]), version, calibrated_on=checks.words,
                                     needed=MIN_CALIBRATION_WORDS, confidence=float(predicted[task_id].score or 0.0))
            new = page_checks(words[task_id], wrong[task_id], threshold, version, line)
        else:
            new = {**EMPTY_CHECKS, DATA_CONFIDENCE: ""}
        data = task.get("data") or {}
        if any(data.get(k) != new[k] for k in (DATA_CHECK_TEXT, DATA_CHECK_WORDS, DATA_CONFIDENCE)):
            # The listing's data, not a fresh read: reading a task makes Label Studio ask the ML backend for a
            # prediction it lacks, which would decode every task here.
            client.patch_task_data(task_id, {**data, **new})
            changed += 1
    checks.page = None
    if ahead_scores:
        share = sum(p >= threshold for p in ahead_scores) / len(ahead_scores)
        checks.page = PageMarks(version, round(threshold, 4), len(ahead), len(ahead_scores), round(share, 4))
    return changed
