"""Label Studio as habla-ls uses it, through label-studio-sdk: :class:`LabelStudioClient`.

Shared by ``sync push``/``sync pull``, the active-learning round, the prefill choice, ``backend connect``
and the demo. The client is one connection (:mod:`sync.ls_transport`: the SDK's client, retries, errors
as one line without the token) with the calls habla-ls makes: about projects and their setup
(:mod:`sync.ls_projects`), bulk reads of annotations (:mod:`sync.ls_exports`), and, here, tasks,
predictions and annotations one by one or in batches.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sync.dm_filters import ext_id_filter
from sync.ls_errors import LabelStudioAuthError, LabelStudioError
from sync.ls_exports import ExportMethods
from sync.ls_projects import ProjectMethods
from sync.places import LabelStudioProject

# Filters OR-ed into one task query: keeps the URL short and the SQL cheap.
EXT_ID_QUERY_CHUNK = 50


class LabelStudioClient(ProjectMethods, ExportMethods):
    """One authenticated connection to a Label Studio server."""

    @classmethod
    def for_project(cls, project: LabelStudioProject) -> LabelStudioClient:
        """A connection to the server of ``project``, with its token."""
        if not project.token:
            raise LabelStudioAuthError(f"Label Studio at {project.url}: no token to connect with")
        return cls(project.url, project.token)

    # -- tasks ---------------------------------------------------------------------------------------

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Imports tasks (with ``predictions``/``annotations`` if given); their new ids, in input order.
        Sent once, never retried (see the module docstring)."""
        if not tasks:
            return []
        what = f"importing {len(tasks)} tasks into project {project_id}"
        answer = self.request(
            "POST", f"api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=list(tasks),
            idempotent=False, what=what,
        )
        ids = answer.get("task_ids") if isinstance(answer, dict) else None
        if not isinstance(ids, list) or len(ids) != len(tasks):
            raise LabelStudioError(
                f"Label Studio at {self.url}: {what} answered {len(ids) if isinstance(ids, list) else 'no'} task ids"
            )
        return [int(i) for i in ids]

    def iter_tasks(
        self,
        project_id: int,
        *,
        filters: Sequence[dict[str, Any]] = (),
        conjunction: str = "and",
        ordering: Sequence[str] = (),
        view_id: int | None = None,
        all_fields: bool = False,
        include: str | None = None,
        page_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """Tasks of a project through the Data Manager API, optionally filtered/ordered.

        ``filters`` are Data Manager filter items, e.g. ``ext_id_filter(key)``; ``all_fields`` adds
        annotations and predictions; ``include`` (e.g. ``"id,data"``) asks for those fields only. With
        ``view_id`` the view's own filters and ordering apply. Without ``all_fields``, ``review=true``
        keeps Label Studio from asking an ML backend for predictions of the listed tasks as a side
        effect (with it, Label Studio would leave out annotations and predictions).
        """
        params: dict[str, Any] = {"project": project_id, "page_size": page_size}
        if view_id is not None:
            params["view"] = view_id
        else:
            query: dict[str, Any] = {}
            if filters:
                query["filters"] = {"conjunction": conjunction, "items": list(filters)}
            if ordering:
                query["ordering"] = list(ordering)
            if query:
                params["query"] = json.dumps(query)
        if all_fields:
            params["fields"] = "all"
        else:
            params["review"] = "true"
        if include:
            params["include"] = include
        page = 1
        seen = 0
        what = f"listing the tasks of project {project_id}"
        while True:
            response = self._tasks_page(what, {**params, "page": page})
            if response is None:
                return
            answer = self._json(response, what) or {}
            tasks = answer.get("tasks", [])
            yield from tasks
            seen += len(tasks)
            if not tasks or seen >= int(answer.get("total", 0)):
                return
            page += 1

    def iter_task_data(self, project_id: int, page_size: int = 1000) -> Iterator[tuple[int, dict[str, Any]]]:
        """(id, data) of every task, id order; only those two fields are asked for."""
        for task in self.iter_tasks(project_id, include="id,data", page_size=page_size):
            yield int(task["id"]), task.get("data") or {}

    def get_task(self, task_id: int) -> dict[str, Any]:
        return self._sdk_call(f"reading task {task_id}", self._sdk.tasks.with_raw_response.get, str(task_id))

    def tasks_by_ext_id(self, project_id: int, keys: Iterable[str]) -> dict[str, list[int]]:
        """Task ids per ``data.ext_id`` for the given keys (keys with no task are absent)."""
        found: dict[str, list[int]] = {}
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), EXT_ID_QUERY_CHUNK):
            chunk = keys[start : start + EXT_ID_QUERY_CHUNK]
            for task in self.iter_tasks(
                project_id, filters=[ext_id_filter(k) for k in chunk], conjunction="or", include="id,data", page_size=1000
            ):
                key = (task.get("data") or {}).get("ext_id")
                if key in chunk:
                    found.setdefault(key, []).append(int(task["id"]))
        return {k: sorted(v) for k, v in found.items()}

    def all_ext_ids(self, project_id: int) -> dict[str, list[int]]:
        """Every task's ``data.ext_id`` in the project (tasks without one are left out)."""
        found: dict[str, list[int]] = {}
        for task_id, data in self.iter_task_data(project_id):
            key = data.get("ext_id")
            if key:
                found.setdefault(key, []).append(task_id)
        return {k: sorted(v) for k, v in found.items()}

    def patch_task_data(self, task_id: int, data: dict[str, Any]) -> dict[str, Any]:
        """Sets the task's data to ``data`` (all of it: Label Studio replaces the whole dict)."""
        return self._sdk_call(f"updating task {task_id}", self._sdk.tasks.with_raw_response.update, str(task_id), data=data)

    def update_task_data(self, task_id: int, data: dict[str, Any]) -> dict[str, Any]:
        """Replaces the task's data with ``data`` merged over what it has now."""
        current = self.get_task(task_id).get("data") or {}
        return self.patch_task_data(task_id, {**current, **data})

    def delete_task(self, task_id: int) -> None:
        self._sdk_call(f"deleting task {task_id}", self._sdk.tasks.with_raw_response.delete, str(task_id))

    # -- predictions and annotations -----------------------------------------------------------------

    def create_predictions(self, project_id: int, predictions: Sequence[dict[str, Any]]) -> int:
        """Bulk-creates predictions ``{"task": id, "result": [...], "score": s, "model_version": v}``.
        Sent once, never retried."""
        if not predictions:
            return 0
        answer = self.request(
            "POST", f"api/projects/{project_id}/import/predictions", json=list(predictions), idempotent=False,
            what=f"adding {len(predictions)} predictions to project {project_id}",
        )
        return int((answer or {}).get("created", len(predictions)))

    def update_prediction(self, prediction_id: int, **fields: Any) -> dict[str, Any]:
        """Changes a stored prediction, e.g. ``score=0.25``."""
        return self._sdk_call(
            f"updating prediction {prediction_id}", self._sdk.predictions.with_raw_response.update, prediction_id, **fields
        )

    def delete_prediction(self, prediction_id: int) -> None:
        self._sdk_call(f"deleting prediction {prediction_id}", self._sdk.predictions.with_raw_response.delete, prediction_id)

    def create_annotation(
        self, task_id: int, result: list[dict[str, Any]], *, was_cancelled: bool = False, **fields: Any
    ) -> dict[str, Any]:
        return self._sdk_call(
            f"annotating task {task_id}", self._sdk.annotations.with_raw_response.create, task_id,
            result=result, was_cancelled=was_cancelled, create=True, **fields,
        )

    def update_annotation(self, annotation_id: int, result: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
        if result is not None:
            fields["result"] = result
        return self._sdk_call(
            f"updating annotation {annotation_id}", self._sdk.annotations.with_raw_response.update, annotation_id, **fields
        )

    def delete_annotation(self, annotation_id: int) -> None:
        self._sdk_call(f"deleting annotation {annotation_id}", self._sdk.annotations.with_raw_response.delete, annotation_id)
