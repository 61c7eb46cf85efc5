"""Predictions of the served version for every unlabelled task that lacks one: what promote, rollback
and the finish run so that the labelling page is prefilled by the served version at once (a version
served before is answered mostly from the prediction cache). The page's checks follow with the prefill
decision (:mod:`habla_ls.prefill`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from habla_ls.config import Settings
from habla_ls.corrections import project_id_of
from habla_ls.served_model import (
    ServedModel,
    has_prediction,
    is_labelled,
    prediction_payload,
    task_key,
    task_sha,
    transcribe_audio,
)
from ml_backend.prediction_cache import PredictionCache, cache_path
from ml_backend.registry import RegistryError, read_current
from sync.archive import Archive
from sync.ls_client import LabelStudioClient

log = logging.getLogger(__name__)


@dataclass
class PredictSummary:
    """What :func:`predict_unlabelled` did: tasks that lacked a prediction of the served version."""

    project_id: int
    served_version: str
    missing: int = 0
    decoded: int = 0
    predictions_created: int = 0
    unusable: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"predictions of {self.served_version}: {self.missing} unlabelled task(s) lacked one; "
            f"{self.predictions_created} stored ({self.decoded} clips decoded now, the rest from the prediction cache)"
        ]
        if self.unusable:
            out.append(f"left out: {len(self.unusable)} task(s) whose audio could not be used")
        return out


def predict_unlabelled(
    settings: Settings, client: LabelStudioClient, *, project_id: int | None = None, batch_size: int = 8
) -> PredictSummary:
    """Gives every unlabelled task a prediction of the served version, where it has none yet.

    What promote and rollback run so that the labelling page can be prefilled by the served version
    at once; a version served before is mostly answered from the prediction cache.
    """
    models_dir = settings.models_dir
    if read_current(models_dir) is None:
        raise RegistryError(f"no current model in {models_dir}: run `habla-ls models bootstrap` first")
    project_id = project_id if project_id is not None else project_id_of(settings, client)
    model = ServedModel(models_dir, settings.language)
    summary = PredictSummary(project_id, model.version)
    todo: list[tuple[dict[str, Any], str]] = []
    for task in client.iter_tasks(project_id, all_fields=True):
        if is_labelled(task) or has_prediction(task, model.version):
            continue
        summary.missing += 1
        sha = task_sha(task)
        if sha:
            todo.append((task, sha))
        else:
            summary.unusable.append(f"task {task['id']} ({task_key(task)}): audio not in the archive")
    cache = PredictionCache(cache_path(settings.home))
    try:
        cached_before = len(cache.get_many([sha for _, sha in todo], model.version, model.fingerprint))
        found, errors = transcribe_audio(
            model, [sha for _, sha in todo], Archive(settings.archive_dir), cache,
            batch_size=batch_size, desc=f"transcribing with {model.version}", words=True,
        )
    finally:
        cache.close()
    summary.decoded = len(found) - cached_before
    new_predictions = []
    for task, sha in todo:
        if sha in found:
            new_predictions.append(prediction_payload(int(task["id"]), found[sha], model.version))
        else:
            summary.unusable.append(f"task {task['id']} ({task_key(task)}): {errors.get(sha, 'not transcribed')}")
    for line in summary.unusable:
        log.warning(line)
    summary.predictions_created = client.create_predictions(project_id, new_predictions)
    return summary
