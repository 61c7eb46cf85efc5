"""One active-learning round: predict the unlabelled tasks, rank them, write the order into Label Studio.

(1) every task without a human transcript is transcribed by the served model (the engine, batched);
(2) :mod:`sync.active_learning` ranks them by expected errors per second of audio, with disagreement
against a reference model (the served version's parent, else none) and the diversity rule;
(3) each task gets the prediction (``score`` = confidence) and ``data.priority`` (1 = first), so the
Data Manager sorted by priority shows the most useful tasks first;
(4) with a budget, the top N also form a named Data Manager view.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from habla_ls.config import Settings
from ml_backend.audio import AudioError, decode
from ml_backend.engine import Engine, load_engine
from ml_backend.registry import RegistryError, read_card, read_current, version_dir
from sync.active_learning import Candidate, Ranked, rank, top
from sync.archive import Archive
from sync.ledger import Ledger
from sync.ls_client import LabelStudioClient
from sync.pull import find_project_id

log = logging.getLogger(__name__)

DEFAULT_VIEW_TITLE = "habla-ls: correct next"


@dataclass
class RoundSummary:
    project_id: int
    served_version: str
    reference_version: str | None
    tasks_seen: int = 0
    already_labelled: int = 0
    predicted: int = 0
    predictions_created: int = 0
    unusable: list[str] = field(default_factory=list)  # "task N (key): reason"
    ranked: list[Ranked] = field(default_factory=list)
    view_id: int | None = None
    budget: int | None = None

    def lines(self) -> list[str]:
        out = [
            f"served model: {self.served_version}; reference for disagreement: {self.reference_version or 'none'}",
            f"tasks: {self.tasks_seen} ({self.already_labelled} already corrected by a human, {len(self.ranked)} ranked)",
            f"predictions: {self.predicted} transcribed, {self.predictions_created} stored in Label Studio",
        ]
        if self.unusable:
            out.append(f"left out: {len(self.unusable)} task(s) whose audio could not be used")
        if self.budget is not None:
            chosen = top(self.ranked, self.budget)
            out.append(f"next {len(chosen)} to correct (view id {self.view_id}):")
            for r in chosen:
                c = r.candidate
                out.append(
                    f"  #{r.priority:<4} task {c.task_id:<6} {c.key:<48} conf {c.confidence:.2f} "
                    f"usefulness {r.usefulness:.2f}/s  {c.text[:60]!r}"
                )
        return out


def reference_version(models_dir: Path, served: str) -> str | None:
    """The served version's parent when it is still in the registry (what it was trained from)."""
    try:
        parent = read_card(version_dir(models_dir, served)).get("parent")
        if parent:
            version_dir(models_dir, parent)
            return parent
    except RegistryError:
        pass
    return None


def _is_labelled(task: dict[str, Any]) -> bool:
    annotations = task.get("annotations")
    if annotations is not None:
        return any(not a.get("was_cancelled") for a in annotations)
    return bool(task.get("total_annotations", 0) - task.get("cancelled_annotations", 0) > 0)


def _clip_for(task: dict[str, Any], archive: Archive) -> np.ndarray:
    sha = (task.get("data") or {}).get("sha256")
    if not sha or not archive.contains(sha):
        raise AudioError("audio not in the archive (was it pushed by habla-ls?)")
    return decode(archive.path_for(sha))


def _transcribe_all(engine: Engine, clips: Sequence[np.ndarray], batch_size: int, desc: str) -> list:
    results = []
    with tqdm(total=len(clips), desc=desc, unit="clip", disable=None) as bar:
        for start in range(0, len(clips), batch_size):
            results.extend(engine.transcribe(clips[start : start + batch_size]))
            bar.update(min(batch_size, len(clips) - start))
    return results


def textarea_result(text: str) -> list[dict[str, Any]]:
    return [{"from_name": "transcription", "to_name": "audio", "type": "textarea", "value": {"text": [text]}}]


def run_round(
    settings: Settings,
    *,
    budget: int | None = None,
    reference: str | None = "parent",
    batch_size: int = 8,
    view_title: str = DEFAULT_VIEW_TITLE,
    client: LabelStudioClient | None = None,
) -> RoundSummary:
    """``reference``: ``"parent"`` (default), ``"none"``, or a version name to measure disagreement against."""
    models_dir = settings.models_dir
    served = read_current(models_dir)
    if served is None:
        raise RegistryError(f"no current model in {models_dir}: run `habla-ls models bootstrap` first")
    if reference == "parent":
        reference = reference_version(models_dir, served)
    elif reference in (None, "none"):
        reference = None
    else:
        version_dir(models_dir, reference)

    own_client = client is None
    client = client or LabelStudioClient.from_settings(settings)
    try:
        with Ledger(settings.ledger_path) as ledger:
            project_id = ledger.project_id(settings.label_studio_url, settings.project_title) or find_project_id(
                settings, ledger, client
            )
            summary = RoundSummary(project_id, served, reference, budget=budget)
            archive = Archive(settings.archive_dir)

            todo: list[tuple[dict[str, Any], np.ndarray]] = []
            for task in client.iter_tasks(project_id, all_fields=True):
                summary.tasks_seen += 1
                if _is_labelled(task):
                    summary.already_labelled += 1
                    continue
                try:
                    todo.append((task, _clip_for(task, archive)))
                except AudioError as exc:
                    key = (task.get("data") or {}).get("ext_id", "?")
                    line = f"task {task['id']} ({key}): {exc}"
                    summary.unusable.append(line)
                    log.warning(line)

            engine = load_engine(models_dir, language=settings.language)
            clips = [clip for _, clip in todo]
            hypotheses = _transcribe_all(engine, clips, batch_size, f"transcribing with {served}")
            summary.predicted = len(hypotheses)
            references: list[str | None] = [None] * len(todo)
            if reference is not None:
                ref_engine = load_engine(models_dir / reference, language=settings.language)
                references = [t.text for t in _transcribe_all(ref_engine, clips, batch_size, f"reference {reference}")]

            candidates = []
            new_predictions = []
            for (task, _), hyp, ref in zip(todo, hypotheses, references, strict=True):
                data = task.get("data") or {}
                candidates.append(
                    Candidate(
                        key=str(data.get("ext_id", task["id"])),
                        task_id=int(task["id"]),
                        session=str(data.get("session", "")),
                        speaker=str(data.get("speaker", "")),
                        duration=float(data.get("duration") or hyp.audio_seconds or 0.0),
                        text=hyp.text,
                        confidence=hyp.confidence,
                        reference_text=ref,
                    )
                )
                has_it = any(p.get("model_version") == engine.version for p in task.get("predictions") or [])
                if not has_it:
                    new_predictions.append(
                        {
                            "task": int(task["id"]),
                            "result": textarea_result(hyp.text),
                            "score": round(float(hyp.confidence), 4),
                            "model_version": engine.version,
                        }
                    )
            summary.predictions_created = client.create_predictions(project_id, new_predictions)
            summary.ranked = rank(candidates)

            for r in tqdm(summary.ranked, desc="writing priorities", unit="task", disable=None):
                client.update_task_data(
                    r.candidate.task_id, {"priority": r.priority, "usefulness": round(r.usefulness, 4)}
                )
            if budget is not None:
                summary.view_id = _ensure_view(client, project_id, view_title, budget)
            return summary
    finally:
        if own_client:
            client.close()


def _ensure_view(client: LabelStudioClient, project_id: int, title: str, budget: int) -> int:
    """A Data Manager tab with the top ``budget`` tasks, most useful first (replaced on every round)."""
    for view in client.views(project_id):
        if (view.get("data") or {}).get("title") == title:
            client.request("DELETE", f"/api/dm/views/{view['id']}")
    view = client.create_view(
        project_id,
        title,
        filters=[
            {"filter": "filter:tasks:data.priority", "operator": "less_or_equal", "type": "Number", "value": budget},
            {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
        ],
        ordering=["tasks:data.priority"],
    )
    return int(view["id"])
