"""One active-learning round: predict the unlabelled tasks, rank them, write the order into Label Studio.

(1) every task without a human transcript is transcribed by the served model (the engine, batched;
each clip once per model version: transcripts go into the prediction cache that the ML backend reads,
so Label Studio asking the backend for these tasks later costs no decoding);
(2) :mod:`sync.active_learning` ranks them with the round's strategy: by expected errors per second of
audio, with disagreement against a reference model (the served version's parent, else none), and either
the session/speaker rule (``uncertainty``) or distance to what is already corrected in the served model's
encoder space (``diverse``); ``random`` is the baseline;
(3) each task gets the prediction (``score`` = confidence) and ``data.priority`` (1 = first), so the Data
Manager sorted by priority shows the most useful tasks first;
(4) with a budget, the top N also form a named Data Manager view;
(5) :mod:`habla_ls.prefill` chooses the project's prefill source (and the page's word checks follow it:
:mod:`habla_ls.word_marks`), and that source's prediction of each ranked task gets a score that makes
Label Studio's label stream ("Label All Tasks", uncertainty sampling) open the tasks in the round's order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from habla_ls.config import Settings
from habla_ls.corrections import project_id_of
from habla_ls.prefill import PrefillDecision, describe_decision, refresh
from habla_ls.served_model import (
    ServedModel,
    embed_audio,
    has_prediction,
    is_labelled,
    prediction_payload,
    reference_version,
    task_key,
    task_sha,
    transcribe_audio,
)
from ml_backend.prediction_cache import CachedPrediction, PredictionCache, cache_path
from ml_backend.registry import RegistryError, read_current, version_dir
from sync.active_learning import (
    DIVERSE,
    RANDOM,
    UNCERTAINTY,
    Candidate,
    Ranked,
    rank,
    rank_diverse,
    rank_random,
    top,
)
from sync.archive import Archive
from sync.labelling_config import SAMPLING_ROUND_ORDER, label_order_score, round_task_data
from sync.ls_client import LabelStudioClient

log = logging.getLogger(__name__)

DEFAULT_VIEW_TITLE = "habla-ls: correct next"
ALL_TASKS_VIEW_TITLE = "All tasks"


@dataclass
class RoundSummary:
    project_id: int
    served_version: str
    reference_version: str | None
    strategy: str
    tasks_seen: int = 0
    already_labelled: int = 0
    predicted: int = 0
    decoded: int = 0  # clips the engine transcribed now (the rest came from the prediction cache)
    predictions_created: int = 0
    unusable: list[str] = field(default_factory=list)  # "task N (key): reason"
    ranked: list[Ranked] = field(default_factory=list)
    view_id: int | None = None
    budget: int | None = None
    prefill: PrefillDecision | None = None

    def lines(self) -> list[str]:
        out = [
            f"served model: {self.served_version}; reference for disagreement: {self.reference_version or 'none'}; "
            f"ranking: {self.strategy}",
            f"tasks: {self.tasks_seen} ({self.already_labelled} already corrected by a human, {len(self.ranked)} ranked)",
            f"predictions: {self.predicted} transcribed ({self.decoded} clips decoded now, the rest from the "
            f"prediction cache), {self.predictions_created} stored in Label Studio",
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
        if self.prefill is not None:
            out += describe_decision(self.prefill)
        return out


def run_round(
    settings: Settings,
    *,
    budget: int | None = None,
    reference: str | None = "parent",
    batch_size: int = 8,
    view_title: str = DEFAULT_VIEW_TITLE,
    client: LabelStudioClient | None = None,
    prefill: bool = True,
    strategy: str | None = None,
    seed: int = 0,
) -> RoundSummary:
    """``reference``: ``"parent"`` (default), ``"none"``, or a version name to measure disagreement against.

    ``strategy``: one of :data:`sync.active_learning.STRATEGIES` (default: the settings' ``round_strategy``);
    ``seed`` orders ``random``.
    With ``prefill`` the round ends by choosing the project's prefill source (:mod:`habla_ls.prefill`).
    """
    models_dir = settings.models_dir
    strategy = strategy or settings.round_strategy
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
    client = client or LabelStudioClient.for_project(settings.label_studio_project())
    cache = PredictionCache(cache_path(settings.home))
    try:
        project_id = project_id_of(settings, client)
        summary = RoundSummary(project_id, served, reference, strategy=strategy, budget=budget)
        archive = Archive(settings.archive_dir)

        todo: list[tuple[dict[str, Any], str]] = []
        corrected: list[str] = []  # the audio of tasks a human corrected: what the diverse ranking moves away from
        for task in client.iter_tasks(project_id, all_fields=True):
            summary.tasks_seen += 1
            if is_labelled(task):
                summary.already_labelled += 1
                corrected.append(task_sha(task))
                continue
            sha = task_sha(task)
            if not sha:
                line = f"task {task['id']} ({task_key(task)}): audio not in the archive (was it pushed by habla-ls?)"
                summary.unusable.append(line)
                log.warning(line)
                continue
            todo.append((task, sha))

        model = ServedModel(models_dir, settings.language)
        cached_before = len(cache.get_many([sha for _, sha in todo], model.version, model.fingerprint))
        hypotheses, errors = transcribe_audio(
            model, [sha for _, sha in todo], archive, cache, batch_size=batch_size, desc=f"transcribing with {served}",
            words=True,
        )
        summary.decoded = len(hypotheses) - cached_before
        references: dict[str, CachedPrediction] = {}
        if reference is not None:
            ref_model = ServedModel(models_dir / reference, settings.language)
            usable = [sha for _, sha in todo if sha in hypotheses]
            references, _ = transcribe_audio(
                ref_model, usable, archive, cache, batch_size=batch_size, desc=f"reference {reference}"
            )

        candidates = []
        shas: dict[str, str] = {}  # candidate key -> audio sha256
        new_predictions = []
        for task, sha in todo:
            if sha in errors or sha not in hypotheses:
                line = f"task {task['id']} ({task_key(task)}): {errors.get(sha, 'not transcribed')}"
                summary.unusable.append(line)
                log.warning(line)
                continue
            hyp = hypotheses[sha]
            summary.predicted += 1
            data = task.get("data") or {}
            ref = references.get(sha)
            candidates.append(
                Candidate(
                    key=str(data.get("ext_id", task["id"])),
                    task_id=int(task["id"]),
                    session=str(data.get("session", "")),
                    speaker=str(data.get("speaker", "")),
                    duration=float(data.get("duration") or hyp.meta.get("audio_seconds") or 0.0),
                    text=hyp.text,
                    confidence=float(hyp.score or 0.0),
                    reference_text=ref.text if ref is not None else None,
                )
            )
            shas[candidates[-1].key] = sha
            if not has_prediction(task, model.version):
                new_predictions.append(prediction_payload(int(task["id"]), hyp, model.version))
        summary.predictions_created = client.create_predictions(project_id, new_predictions)
        summary.ranked = _rank(strategy, candidates, shas, corrected, model, archive, cache, seed=seed)

        for r in tqdm(summary.ranked, desc="writing priorities", unit="task", disable=None):
            client.update_task_data(
                r.candidate.task_id,
                round_task_data(priority=r.priority, usefulness=r.usefulness),
            )
        if budget is not None:
            summary.view_id = _ensure_view(client, project_id, view_title, budget)
        if prefill:
            summary.prefill = refresh(settings, client=client, project_id=project_id)
            if summary.prefill.applied and summary.prefill.prefill:
                _order_label_stream(client, project_id, summary.ranked, summary.prefill.prefill)
        return summary
    finally:
        cache.close()
        if own_client:
            client.close()


def _rank(
    strategy: str,
    candidates: list[Candidate],
    shas: dict[str, str],
    corrected: list[str],
    model: ServedModel,
    archive: Archive,
    cache: PredictionCache,
    *,
    seed: int,
) -> list[Ranked]:
    if strategy == UNCERTAINTY:
        return rank(candidates)
    if strategy == RANDOM:
        return rank_random(candidates, seed=seed)
    if strategy != DIVERSE:
        raise ValueError(f"unknown ranking strategy {strategy!r} (choose from {UNCERTAINTY}, {DIVERSE}, {RANDOM})")
    vectors = embed_audio(model, [*shas.values(), *[sha for sha in corrected if sha]], archive, cache)
    by_key = {key: vectors[sha] for key, sha in shas.items() if sha in vectors}
    return rank_diverse(candidates, by_key, [vectors[sha] for sha in corrected if sha in vectors])


def _order_label_stream(client: LabelStudioClient, project_id: int, ranked: Sequence[Ranked], version: str) -> None:
    """Makes "Label All Tasks" open the tasks in the round's order.

    Label Studio's label stream ignores the open tab's ordering; with uncertainty sampling it opens the
    task whose prefill prediction (of the project's ``model_version``) has the lowest score, so each
    ranked task's prefill prediction gets :func:`sync.labelling_config.label_order_score` as its score
    (the model's confidence stays visible in the task data).
    """
    wanted = {r.candidate.task_id: label_order_score(r.priority, len(ranked)) for r in ranked}
    changes = []
    for task in client.iter_tasks(project_id, all_fields=True):
        if task["id"] not in wanted:
            continue
        for prediction in task.get("predictions") or []:
            if prediction.get("model_version") == version and prediction.get("score") != wanted[task["id"]]:
                changes.append((int(prediction["id"]), wanted[task["id"]]))
    for prediction_id, score in tqdm(changes, desc="ordering the label stream", unit="task", disable=None if changes else True):
        client.update_prediction(prediction_id, score=score)
    if client.get_project(project_id).get("sampling") != SAMPLING_ROUND_ORDER:
        client.set_project_sampling(project_id, SAMPLING_ROUND_ORDER)


def _ensure_view(client: LabelStudioClient, project_id: int, title: str, budget: int) -> int:
    """A Data Manager tab with the top ``budget`` tasks, most useful first, updated in place on every round.

    Label Studio shows its own "Default" tab only while a project has no tab at all, so once this one
    exists the project also gets an unfiltered one (:data:`ALL_TASKS_VIEW_TITLE`): otherwise, when the
    round's tasks are all corrected, the only tab would say "No tasks found" with the rest unreachable.
    """
    filters = [
        {"filter": "filter:tasks:data.priority", "operator": "less_or_equal", "type": "Number", "value": budget},
        {"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0},
    ]
    ordering = ["tasks:data.priority"]
    views = client.views(project_id)
    ours = [v for v in views if (v.get("data") or {}).get("title") == title]
    for extra in ours[1:]:
        client.delete_view(int(extra["id"]))
    if ours:
        view_id = int(ours[0]["id"])
        client.update_view(view_id, project_id, title, filters=filters, ordering=ordering)
    else:
        view_id = int(client.create_view(project_id, title, filters=filters, ordering=ordering)["id"])
    if not any((v.get("data") or {}).get("title") != title for v in views):
        client.create_view(project_id, ALL_TASKS_VIEW_TITLE, ordering=["tasks:id"])
    return view_id
