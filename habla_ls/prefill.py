"""Which transcript prefills the labelling page: the source with the lowest WER on the corrections so far.

Label Studio prefills a task from its prediction whose ``model_version`` equals the project's
``model_version`` (DESIGN.md). The candidates are Habla's own transcript (the predictions ``sync push``
imports, ``habla-ground-truth``, or ``habla-live`` where Habla has nothing better) and the served model
version (which ``habla-ls round``, promote/rollback and the ML backend give every unlabelled task).

The evidence: every task a human has corrected (as ``sync pull`` reads it: the latest annotation that
was not skipped and not flagged) is a reference; a source's prediction on that task counts only if it
was created *before the task's first correction*, so a model trained on a correction is never credited
for predicting it. WER is the normalised corpus WER of :mod:`training.metrics`. Two sources are compared
on the tasks that have both (so neither wins by having the easier clips). A Habla source takes the
prefill only when it beats the served version on at least ``min_tasks`` common tasks; with fewer, the
served version prefills (the model is what the loop is improving, and what the backend can fill in).

The decision and the per-source table are saved in ``<home>/prefill.json`` (atomically), so
``habla-ls status`` shows them without Label Studio. :func:`describe` gives the lines to print.

Also here: keeping the ML backend's *title* equal to the version it serves. Label Studio asks the
backend when a task opens in the label stream only if the project's ``model_version`` equals the title
of one of its ML backends (``Project.ml_backend_in_model_version``, used by
``Task.get_predictions_for_prelabeling``); the backend is then asked only for tasks lacking that
version's prediction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from habla_ls.config import ConfigError, Settings
from habla_ls.corrections import CorrectedTask, corrected_tasks, project_id_of
from habla_ls.word_marks import measure, save_report, write_page_checks
from ml_backend.registry import list_versions, read_current
from sync.habla import SOURCE_CORRECTED, SOURCE_GROUND_TRUTH, SOURCE_LIVE
from sync.ls_client import LabelStudioClient
from sync.ls_errors import LabelStudioError
from training.metrics import corpus_wer

log = logging.getLogger(__name__)

PREFILL_FILE = "prefill.json"
MIN_TASKS_ENV = "HABLA_LS_PREFILL_MIN_TASKS"
DEFAULT_MIN_TASKS = 10
# Habla's transcript, as push names it; its human-corrected transcripts ("habla-corrected") are shown
# in the table but never prefill: they exist only for clips a person already corrected in Habla.
HABLA_CANDIDATES = (SOURCE_GROUND_TRUTH, SOURCE_LIVE)
HABLA_SOURCES = (SOURCE_CORRECTED, SOURCE_GROUND_TRUTH, SOURCE_LIVE)
# Backends habla-ls registered: titled with the version they serve, or the title older releases used.
LEGACY_BACKEND_TITLE = "habla-ls whisper"
VERSION_TITLE_RE = re.compile(r"^\S+-v\d+$")


# ------------------------------------------------------------------------------------------ evidence


@dataclass(frozen=True)
class SourceScore:
    source: str
    kind: str  # "served", "habla", "earlier version", "other"
    tasks: int
    wer: float | None


@dataclass(frozen=True)
class Comparison:
    """``source`` against the served version on the corrected tasks that have predictions of both."""

    source: str
    served: str
    tasks: int
    wer: float | None
    served_wer: float | None


def _wer(tasks: Sequence[CorrectedTask], source: str) -> float | None:
    if not tasks:
        return None
    return round(corpus_wer([t.reference for t in tasks], [t.predictions[source] for t in tasks]), 4)


def _kind(source: str, served: str | None, versions: Sequence[str]) -> str:
    if source == served:
        return "served"
    if source in HABLA_SOURCES:
        return "habla"
    return "earlier version" if source in versions else "other"


def score_sources(tasks: Sequence[CorrectedTask], served: str | None, versions: Sequence[str] = ()) -> list[SourceScore]:
    """Each source's WER on the corrected tasks it predicted (served first, then by WER)."""
    sources = sorted({s for t in tasks for s in t.predictions} | ({served} if served else set()))
    scores = []
    for source in sources:
        having = [t for t in tasks if source in t.predictions]
        scores.append(SourceScore(source, _kind(source, served, versions), len(having), _wer(having, source)))
    return sorted(scores, key=lambda s: (s.kind != "served", s.wer is None, s.wer or 0.0, s.source))


def compare(tasks: Sequence[CorrectedTask], source: str, served: str) -> Comparison:
    common = [t for t in tasks if source in t.predictions and served in t.predictions]
    return Comparison(source, served, len(common), _wer(common, source), _wer(common, served))


# ------------------------------------------------------------------------------------------ decision


@dataclass
class PrefillDecision:
    prefill: str | None
    reason: str
    served_version: str | None
    min_tasks: int
    corrected_tasks: int = 0
    sources: list[SourceScore] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    project_id: int | None = None
    project_title: str = ""
    label_studio_url: str = ""
    previous: str | None = None  # the project's model_version before
    applied: bool = False  # Label Studio's project now prefills from ``prefill``
    notes: list[str] = field(default_factory=list)  # backend titles, refusals: one line each
    decided_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrefillDecision:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        values["sources"] = [SourceScore(**s) for s in data.get("sources") or []]
        values["comparisons"] = [Comparison(**c) for c in data.get("comparisons") or []]
        return cls(**values)


def min_tasks_setting(environ: dict[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    raw = env.get(MIN_TASKS_ENV)
    if not raw:
        return DEFAULT_MIN_TASKS
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{MIN_TASKS_ENV}={raw!r}: expected a whole number of corrected tasks") from None
    if value < 1:
        raise ConfigError(f"{MIN_TASKS_ENV}={raw!r}: must be at least 1")
    return value


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def decide(
    tasks: Sequence[CorrectedTask],
    served: str | None,
    *,
    min_tasks: int = DEFAULT_MIN_TASKS,
    current: str | None = None,
    versions: Sequence[str] = (),
) -> PrefillDecision:
    """The prefill source and why (pure: no Label Studio)."""
    sources = score_sources(tasks, served, versions)
    present = {s.source for s in sources}
    decision = PrefillDecision(None, "", served, min_tasks, len(tasks), sources)
    if served is None:
        habla = next((h for h in HABLA_CANDIDATES if h in present), None) or current
        decision.prefill = habla
        decision.reason = "no model version is served yet" + (f": {habla} prefills" if habla else "")
        return decision
    decision.comparisons = [compare(tasks, h, served) for h in HABLA_CANDIDATES if h in present]
    better = [
        c for c in decision.comparisons
        if c.tasks >= min_tasks and c.wer is not None and c.served_wer is not None and c.wer < c.served_wer
    ]
    if better:
        best = min(better, key=lambda c: (c.wer, HABLA_CANDIDATES.index(c.source)))
        decision.prefill = best.source
        decision.reason = (
            f"Habla's transcript ({best.source}) has the lower WER on the same {best.tasks} corrected tasks: "
            f"{_fmt(best.wer)} vs {_fmt(best.served_wer)} for the served {served}"
        )
        return decision
    decision.prefill = served
    enough = [c for c in decision.comparisons if c.tasks >= min_tasks]
    if enough:
        c = min(enough, key=lambda c: c.wer if c.wer is not None else 1e9)
        decision.reason = (
            f"the served {served} has a WER no worse than Habla's transcript ({c.source}) on the same "
            f"{c.tasks} corrected tasks: {_fmt(c.served_wer)} vs {_fmt(c.wer)}"
        )
    elif not tasks:
        decision.reason = f"the served {served} prefills: no human corrections yet to compare it with Habla's transcript"
    else:
        most = max((c.tasks for c in decision.comparisons), default=0)
        how_many = f"none of the {len(tasks)} corrected tasks has" if most == 0 else f"only {most} corrected task(s) have"
        decision.reason = (
            f"the served {served} prefills by default: {how_many} predictions of both it and Habla's transcript "
            f"made before the correction ({min_tasks} needed to compare)"
        )
    return decision


# ------------------------------------------------------------------------------------------ applying


def sync_backend_titles(client: LabelStudioClient, project_id: int, basic_auth: tuple[str, str] | None = None) -> list[str]:
    """Renames habla-ls's ML backends on the project to the version each one serves; one note per change.

    Label Studio asks a backend when a task opens in the label stream only while the project's
    ``model_version`` equals the backend's title; renaming carries a project version equal to the old
    title along (``MLBackend.save``).
    """
    notes = []
    for backend in client.ml_backends(project_id):  # listing makes Label Studio ask each backend /setup
        title, serving = str(backend.get("title") or ""), str(backend.get("model_version") or "")
        ours = title == LEGACY_BACKEND_TITLE or VERSION_TITLE_RE.match(title)
        if not ours:
            continue
        if backend.get("state") in ("DI", "ER"):  # disconnected or failing (training and predicting are fine)
            notes.append(
                f"ML backend {backend.get('url')} ({title}) is not reachable: while it is down, Label Studio's "
                f"label stream shows no prefill when the project's prefill version is {title} (Label Studio asks "
                "the backend instead of reading stored predictions); start it: `habla-ls backend serve`"
            )
            continue
        if not serving or serving == title:
            continue
        try:
            client.rename_ml_backend(backend, serving, basic_auth=basic_auth)
            notes.append(f"ML backend {backend.get('url')} renamed {title} -> {serving} (the version it serves)")
        except LabelStudioError as exc:
            notes.append(f"ML backend {backend.get('url')} could not be renamed to {serving}: {exc}")
    return notes


def apply(client: LabelStudioClient, project_id: int, decision: PrefillDecision) -> None:
    """Sets the project's prefill version; a refusal becomes a note and ``applied`` stays False."""
    project = client.get_project(project_id)
    decision.previous = project.get("model_version") or None
    if decision.prefill is None or decision.prefill == decision.previous:
        decision.applied = decision.prefill is not None
        return
    try:
        client.set_project_model_version(project_id, decision.prefill)
        decision.applied = True
    except LabelStudioError as exc:
        # Label Studio accepts only a version it has predictions of (or a backend titled so).
        decision.notes.append(
            f"Label Studio kept {decision.previous or 'no version'} as the prefill: it has no predictions of "
            f"{decision.prefill} yet (run `habla-ls round`) [{exc}]"
        )


def refresh(
    settings: Settings,
    *,
    client: LabelStudioClient | None = None,
    project_id: int | None = None,
    min_tasks: int | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> PrefillDecision:
    """Reads the evidence from Label Studio, decides, sets the project's prefill and saves the decision;
    then measures the word checks on the same evidence and gives the unlabelled tasks those of the prefill.

    Raises ``ConfigError`` (no token) or ``LabelStudioError`` (unreachable, no project).
    """
    own_client = client is None
    client = client or LabelStudioClient.for_project(settings.label_studio_project())
    try:
        project_id = project_id if project_id is not None else project_id_of(settings, client)
        notes = sync_backend_titles(client, project_id, basic_auth or _basic_auth_from_env())
        current = client.get_project(project_id).get("model_version") or None
        evidence = corrected_tasks(client, project_id)
        decision = decide(
            evidence,
            read_current(settings.models_dir),
            min_tasks=min_tasks or min_tasks_setting(),
            current=current,
            versions=list_versions(settings.models_dir),
        )
        decision.project_id, decision.project_title = project_id, settings.project_title
        decision.label_studio_url = settings.label_studio_url
        decision.notes = notes
        apply(client, project_id, decision)
        decision.decided_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        save(settings.home, decision)
        # The page's word checks follow whatever now prefills it (:mod:`habla_ls.word_marks`).
        checks = measure(settings, evidence)
        write_page_checks(settings, client, project_id, decision.prefill if decision.applied else decision.previous, checks)
        save_report(settings.reports_dir, checks)
        return decision
    finally:
        if own_client:
            client.close()


def _basic_auth_from_env() -> tuple[str, str] | None:
    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    return (user, password) if user and password else None


# ------------------------------------------------------------------------------------------ the record


def prefill_path(home: Path) -> Path:
    return Path(home) / PREFILL_FILE


def save(home: Path, decision: PrefillDecision) -> Path:
    path = prefill_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{PREFILL_FILE}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(decision.to_dict(), fh, indent=2, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(home: Path) -> PrefillDecision | None:
    """The last saved decision, or None (never decided, or an unreadable file: one warning)."""
    path = prefill_path(home)
    try:
        return PrefillDecision.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        log.warning("%s: unreadable (%s); run `habla-ls status --refresh-prefill`", path, exc)
        return None


def describe_decision(decision: PrefillDecision) -> list[str]:
    """Lines for people: which source prefills and why, then the per-source table."""
    state = "" if decision.applied else " (not set in Label Studio" + ("; see the note below)" if decision.notes else ")")
    out = [f"prefill: {decision.prefill or 'nothing'}{state} -- {decision.reason}"]
    if decision.sources:
        out.append(f"  {'source':<24}{'kind':<17}{'tasks':>6}{'WER':>8}   vs the served version on the same tasks")
        by_source = {c.source: c for c in decision.comparisons}
        for s in decision.sources:
            mark = "*" if s.source == decision.prefill else " "
            c = by_source.get(s.source)
            if c is None:
                versus = ""
            elif c.tasks == 0:
                versus = "no task with predictions of both"
            else:
                versus = f"{_fmt(c.wer)} vs {_fmt(c.served_wer)} on {c.tasks}"
            out.append(f"{mark} {s.source:<24}{s.kind:<17}{s.tasks:>6}{_fmt(s.wer):>8}   {versus}".rstrip())
    out.append(
        f"  (WER on {decision.corrected_tasks} human-corrected task(s), counting only predictions made before the "
        f"correction; a source needs {decision.min_tasks} common tasks to replace the served version)"
    )
    out += [f"  note: {n}" for n in decision.notes]
    return out


def describe(settings: Settings) -> list[str]:
    """What the last decision was, from ``<home>/prefill.json`` (no Label Studio needed)."""
    return describe_saved(load(settings.home))


def describe_saved(decision: PrefillDecision | None) -> list[str]:
    """:func:`describe` for a decision already read with :func:`load` (None: never decided)."""
    if decision is None:
        return ["prefill: not decided yet (it is decided by `habla-ls round`, `models promote/rollback`, `backend connect`)"]
    where = f" for project {decision.project_title!r} (id {decision.project_id}) at {decision.label_studio_url}"
    return describe_decision(decision) + [f"  decided {decision.decided_at}{where}"]
