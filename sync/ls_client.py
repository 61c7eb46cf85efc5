"""A thin client for the parts of Label Studio's REST API that habla-ls uses.

Shared by ``sync push``/``sync pull``, the active-learning round and ``backend connect``. Errors are
:class:`LabelStudioError` with a one-line message that names the URL and the reason, never the token
(the token lives only in the ``Authorization`` header, which no message or log line includes).

Label Studio's SQLite backend locks under parallel writes, so the client is meant to be used from one
thread; imports are never retried automatically because an import is not idempotent (a retry after a
lost response would duplicate tasks; ``sync push`` recovers by looking tasks up by ``ext_id`` instead).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

log = logging.getLogger(__name__)

EXT_ID_FILTER = "filter:tasks:data.ext_id"
# Django refuses query strings with more than 1,000 fields (DATA_UPLOAD_MAX_NUMBER_FIELDS).
EXPORT_IDS_CHUNK = 500
# One page for a whole listing of changed tasks: pages could shift while tasks change.
MARKS_PAGE_SIZE = 100_000
SNAPSHOT_POLL_SECONDS = 0.5
# The Data Manager parses datetime filter values with exactly this format.
DM_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# Filters OR-ed into one task query: keeps the URL short and the SQL cheap.
EXT_ID_QUERY_CHUNK = 50
PROJECT_TITLE_MAX = 50


class LabelStudioError(RuntimeError):
    """Any failure talking to Label Studio; ``str()`` is one line without secrets."""


class LabelStudioUnreachable(LabelStudioError):
    pass


class LabelStudioAuthError(LabelStudioError):
    pass


@dataclass(frozen=True)
class TaskMark:
    """What the Data Manager says about a task, enough to tell whether its annotations may have changed."""

    task_id: int
    updated_at: str  # normalised, see normalise_time()
    ok_annotations: int  # non-cancelled
    cancelled_annotations: int

    @property
    def annotated(self) -> bool:
        return self.ok_annotations + self.cancelled_annotations > 0

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> TaskMark:
        return cls(
            int(row["id"]),
            normalise_time(row.get("updated_at")),
            int(row.get("total_annotations") or 0),
            int(row.get("cancelled_annotations") or 0),
        )


@dataclass(frozen=True)
class TaskCount:
    tasks: int
    ok_annotations: int
    server_time: datetime | None


class LabelStudioClient:
    """One authenticated connection to a Label Studio server."""

    def __init__(self, url: str, token: str, *, timeout: float = 300.0, retries: int = 2):
        self.url = url.rstrip("/")
        self._retries = retries
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {token}"},
            timeout=httpx.Timeout(timeout, connect=10.0),
        )

    @classmethod
    def from_settings(cls, settings: Any) -> LabelStudioClient:
        """From :class:`habla_ls.config.Settings` (raises ``ConfigError`` when no token is configured)."""
        return cls(settings.label_studio_url, settings.require_api_key())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> Any:
        """One API call; JSON body of the answer (``None`` when empty). Raises :class:`LabelStudioError`."""
        return self._json(self.response(method, path, idempotent=idempotent, **kwargs), method, path)

    def response(self, method: str, path: str, *, idempotent: bool | None = None, **kwargs: Any) -> httpx.Response:
        """One API call; the raw answer (status checked). Raises :class:`LabelStudioError`."""
        idempotent = method in ("GET", "HEAD", "PUT", "DELETE") if idempotent is None else idempotent
        attempts = 1 + (self._retries if idempotent else 0)
        for attempt in range(attempts):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt + 1 < attempts:
                    time.sleep(0.5 * (attempt + 1))
                    continue
                reason = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:120]
                raise LabelStudioUnreachable(f"Label Studio at {self.url} is unreachable ({reason})") from None
            break
        if response.status_code == 401:
            raise LabelStudioAuthError(
                f"Label Studio at {self.url} refused the token (HTTP 401): check LABEL_STUDIO_API_KEY "
                "(a legacy token from Account & Settings, and LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN on the server)"
            )
        if response.status_code == 403:
            raise LabelStudioAuthError(f"Label Studio at {self.url}: {method} {path} is forbidden for this token (HTTP 403)")
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio at {self.url}: {method} {path} failed with HTTP {response.status_code}: "
                f"{_error_detail(response)}"
            )
        return response

    def _json(self, response: httpx.Response, method: str, path: str) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise LabelStudioError(f"Label Studio at {self.url}: {method} {path} answered non-JSON") from None

    def whoami(self) -> dict[str, Any]:
        """Checks that the server is reachable and accepts the token."""
        return self.request("GET", "/api/current-user/whoami")

    def version(self) -> str:
        info = self.request("GET", "/api/version") or {}
        return str(info.get("release") or info.get("label-studio-os-package", {}).get("version", "unknown"))

    # -- projects ------------------------------------------------------------------------------------

    def iter_projects(self, *, fields: str | None = None) -> Iterator[dict[str, Any]]:
        """Every project; with ``fields`` (e.g. ``"id,title"``) only those, which spares the server the
        per-project task and annotation counts (0.5 s -> 0.1 s with three projects of 10,000 tasks)."""
        page = 1
        params: dict[str, Any] = {"page_size": 100}
        if fields:
            params["include"] = fields
        while True:
            answer = self.request("GET", "/api/projects", params={**params, "page": page})
            results = answer.get("results", []) if isinstance(answer, dict) else answer
            yield from results
            if not isinstance(answer, dict) or not answer.get("next"):
                return
            page += 1

    def get_project(self, project_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/projects/{project_id}")

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project with exactly this title (the oldest, if several): its ``id`` and ``title`` only."""
        matches = [p for p in self.iter_projects(fields="id,title") if p.get("title") == title]
        return min(matches, key=lambda p: p["id"]) if matches else None

    def create_project(self, title: str, label_config: str, **fields: Any) -> dict[str, Any]:
        if not 3 <= len(title) <= PROJECT_TITLE_MAX:
            raise LabelStudioError(f"project title {title!r} must be 3 to {PROJECT_TITLE_MAX} characters (Label Studio's limit)")
        return self.request("POST", "/api/projects", json={"title": title, "label_config": label_config, **fields})

    def ensure_project(self, title: str, label_config: str, **fields: Any) -> tuple[dict[str, Any], bool]:
        """(project, created): finds the project by title, else creates it with ``label_config``."""
        found = self.find_project(title)
        if found is not None:
            return found, False
        return self.create_project(title, label_config, **fields), True

    def delete_project(self, project_id: int) -> None:
        self.request("DELETE", f"/api/projects/{project_id}")

    def task_count(self, project_id: int) -> int:
        return int(self.get_project(project_id).get("task_number") or 0)

    # -- storage -------------------------------------------------------------------------------------

    def local_storages(self, project_id: int) -> list[dict[str, Any]]:
        return self.request("GET", "/api/storages/localfiles", params={"project": project_id}) or []

    def ensure_local_storage(self, project_id: int, path: str, title: str = "habla-ls archive") -> dict[str, Any]:
        """A Local Files storage on ``path`` (absolute, below the server's document root) so that
        ``/data/local-files/?d=...`` URLs in tasks are served. Never synced: tasks are imported by us."""
        for storage in self.local_storages(project_id):
            if storage.get("path", "").rstrip("/") == path.rstrip("/"):
                return storage
        return self.request(
            "POST",
            "/api/storages/localfiles",
            json={"project": project_id, "path": path, "title": title, "use_blob_urls": False},
        )

    # -- tasks ---------------------------------------------------------------------------------------

    def import_tasks(self, project_id: int, tasks: Sequence[dict[str, Any]]) -> list[int]:
        """Imports tasks (with ``predictions``/``annotations`` if given); their new ids, in input order."""
        if not tasks:
            return []
        answer = self.request(
            "POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=list(tasks)
        )
        ids = answer.get("task_ids") if isinstance(answer, dict) else None
        if not isinstance(ids, list) or len(ids) != len(tasks):
            raise LabelStudioError(
                f"Label Studio at {self.url}: import into project {project_id} answered "
                f"{len(ids) if isinstance(ids, list) else 'no'} task ids for {len(tasks)} tasks"
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
        page_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """Tasks of a project through the Data Manager API, optionally filtered/ordered.

        ``filters`` are Data Manager filter items, e.g. ``ext_id_filter(key)``; ``all_fields`` adds
        annotations and predictions. With ``view_id`` the view's own filters and ordering apply.
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
        page = 1
        seen = 0
        while True:
            try:
                answer = self.request("GET", "/api/tasks", params={**params, "page": page})
            except LabelStudioError as exc:
                # Past the last page Django REST answers 404 ("Invalid page").
                if "HTTP 404" in str(exc) and page > 1:
                    return
                raise
            tasks = answer.get("tasks", [])
            yield from tasks
            seen += len(tasks)
            if not tasks or seen >= int(answer.get("total", 0)):
                return
            page += 1

    def get_task(self, task_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/tasks/{task_id}")

    def tasks_by_ext_id(self, project_id: int, keys: Iterable[str]) -> dict[str, list[int]]:
        """Task ids per ``data.ext_id`` for the given keys (keys with no task are absent)."""
        found: dict[str, list[int]] = {}
        keys = list(dict.fromkeys(keys))
        for start in range(0, len(keys), EXT_ID_QUERY_CHUNK):
            chunk = keys[start : start + EXT_ID_QUERY_CHUNK]
            for task in self.iter_tasks(
                project_id, filters=[ext_id_filter(k) for k in chunk], conjunction="or", page_size=1000
            ):
                key = (task.get("data") or {}).get("ext_id")
                if key in chunk:
                    found.setdefault(key, []).append(int(task["id"]))
        return {k: sorted(v) for k, v in found.items()}

    def all_ext_ids(self, project_id: int) -> dict[str, list[int]]:
        """Every task's ``data.ext_id`` in the project (tasks without one are left out)."""
        found: dict[str, list[int]] = {}
        for task in self.iter_tasks(project_id, page_size=1000):
            key = (task.get("data") or {}).get("ext_id")
            if key:
                found.setdefault(key, []).append(int(task["id"]))
        return {k: sorted(v) for k, v in found.items()}

    def update_task_data(self, task_id: int, data: dict[str, Any]) -> dict[str, Any]:
        """Replaces the task's data with ``data`` merged over what it has now."""
        current = self.get_task(task_id).get("data") or {}
        return self.request("PATCH", f"/api/tasks/{task_id}", json={"data": {**current, **data}})

    def delete_task(self, task_id: int) -> None:
        self.request("DELETE", f"/api/tasks/{task_id}")

    # -- predictions and annotations -----------------------------------------------------------------

    def create_predictions(self, project_id: int, predictions: Sequence[dict[str, Any]]) -> int:
        """Bulk-creates predictions ``{"task": id, "result": [...], "score": s, "model_version": v}``."""
        if not predictions:
            return 0
        answer = self.request(
            "POST", f"/api/projects/{project_id}/import/predictions", json=list(predictions), idempotent=False
        )
        return int((answer or {}).get("created", len(predictions)))

    def update_prediction(self, prediction_id: int, **fields: Any) -> dict[str, Any]:
        """Changes a stored prediction, e.g. ``score=0.25``."""
        return self.request("PATCH", f"/api/predictions/{prediction_id}", json=fields)

    def create_annotation(
        self, task_id: int, result: list[dict[str, Any]], *, was_cancelled: bool = False, **fields: Any
    ) -> dict[str, Any]:
        return self.request(
            "POST",
            f"/api/tasks/{task_id}/annotations",
            json={"result": result, "was_cancelled": was_cancelled, **fields},
        )

    def update_annotation(self, annotation_id: int, result: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/api/annotations/{annotation_id}", json={"result": result, **fields})

    def delete_annotation(self, annotation_id: int) -> None:
        self.request("DELETE", f"/api/annotations/{annotation_id}")

    def export_annotations(self, project_id: int, *, task_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """Label Studio's JSON export of the tasks that have annotations (incl. skipped/cancelled ones).

        With ``task_ids`` only those tasks (asked for in chunks: Django refuses a query string with more
        than 1,000 fields). Costs ~5 ms per task on the server; :meth:`export_snapshot` is cheaper for many.
        """
        if task_ids is not None and not task_ids:
            return []
        chunks = [list(task_ids[i : i + EXPORT_IDS_CHUNK]) for i in range(0, len(task_ids), EXPORT_IDS_CHUNK)] if task_ids else [[]]
        tasks: list[dict[str, Any]] = []
        for chunk in chunks:
            params: list[tuple[str, Any]] = [("exportType", "JSON"), ("download_all_tasks", "false")]
            params += [("ids[]", i) for i in chunk]
            answer = self.request("GET", f"/api/projects/{project_id}/export", params=params)
            tasks += answer if isinstance(answer, list) else []
        return tasks

    def export_snapshot(self, project_id: int, *, timeout: float = 3600.0) -> list[dict[str, Any]]:
        """Every task that has an annotation (incl. skipped/cancelled), through an export snapshot.

        Same task JSON as :meth:`export_annotations`, about 2-3x cheaper on the server: predictions and
        drafts come as ids and related rows are prefetched. The snapshot file is deleted afterwards so
        repeated pulls leave nothing behind in Label Studio. Waits for it when the server builds exports
        in the background (a server with a job queue answers before the snapshot is ready).
        """
        body = {
            "title": "habla-ls sync pull",
            "task_filter_options": {"only_with_annotations": True},
            "serialization_options": {
                "drafts": {"only_id": True},
                "predictions": {"only_id": True},
                "annotations__completed_by": {"only_id": True},
                "include_annotation_history": False,
            },
        }
        export = self.request("POST", f"/api/projects/{project_id}/exports/", json=body, idempotent=False) or {}
        export_id = export.get("id")
        if export_id is None:
            raise LabelStudioError(f"Label Studio at {self.url}: creating an export of project {project_id} answered no id")
        try:
            deadline = time.monotonic() + timeout
            while export.get("status") not in ("completed", "failed"):
                if time.monotonic() > deadline:
                    raise LabelStudioError(f"Label Studio at {self.url}: export {export_id} not ready after {timeout:.0f} s")
                time.sleep(SNAPSHOT_POLL_SECONDS)
                export = self.request("GET", f"/api/projects/{project_id}/exports/{export_id}") or {}
            if export.get("status") == "failed":
                raise LabelStudioError(f"Label Studio at {self.url}: export {export_id} of project {project_id} failed")
            answer = self.request(
                "GET", f"/api/projects/{project_id}/exports/{export_id}/download", params={"exportType": "JSON"}
            )
            return answer if isinstance(answer, list) else []
        finally:
            with contextlib.suppress(LabelStudioError):
                self.request("DELETE", f"/api/projects/{project_id}/exports/{export_id}")

    def task_marks(
        self, project_id: int, *, filters: Sequence[dict[str, Any]] = (), conjunction: str = "and"
    ) -> list[TaskMark]:
        """(id, updated_at, annotation counters) of the tasks matching ``filters``.

        Asks the Data Manager for these four fields only (``include``), all in one page so that rows
        cannot shift between pages while tasks change; ~1.5 ms per row on the server. ``review=true``
        keeps Label Studio from asking an ML backend for predictions of the listed tasks as a side effect.
        """
        marks: list[TaskMark] = []
        page = 1
        while True:
            params = self._dm_params(project_id, filters, conjunction, MARKS_PAGE_SIZE, page)
            answer = self.request("GET", "/api/tasks", params=params) or {}
            rows = answer.get("tasks", [])
            marks += [TaskMark.from_row(row) for row in rows]
            if not rows or len(marks) >= int(answer.get("total", 0)):
                return marks
            page += 1

    def count_tasks(
        self, project_id: int, *, filters: Sequence[dict[str, Any]] = (), conjunction: str = "and"
    ) -> TaskCount:
        """How many tasks match ``filters``, their non-cancelled annotations in all, and the server's time."""
        response = self.response("GET", "/api/tasks", params=self._dm_params(project_id, filters, conjunction, 1, 1))
        answer = self._json(response, "GET", "/api/tasks") or {}
        return TaskCount(int(answer.get("total", 0)), int(answer.get("total_annotations", 0)), response_time(response))

    @staticmethod
    def _dm_params(
        project_id: int, filters: Sequence[dict[str, Any]], conjunction: str, page_size: int, page: int
    ) -> dict[str, Any]:
        query: dict[str, Any] = {"ordering": ["tasks:id"]}
        if filters:
            query["filters"] = {"conjunction": conjunction, "items": list(filters)}
        return {
            "project": project_id,
            "page": page,
            "page_size": page_size,
            "include": "id,updated_at,total_annotations,cancelled_annotations",
            "review": "true",
            "query": json.dumps(query),
        }

    # -- data manager views and ML backends ----------------------------------------------------------

    def create_view(
        self,
        project_id: int,
        title: str,
        *,
        filters: Sequence[dict[str, Any]] = (),
        conjunction: str = "and",
        ordering: Sequence[str] = (),
    ) -> dict[str, Any]:
        """A Data Manager tab, e.g. ordering ``["tasks:predictions_score"]`` to show doubtful clips first."""
        data: dict[str, Any] = {"title": title, "ordering": list(ordering)}
        data["filters"] = {"conjunction": conjunction, "items": list(filters)}
        return self.request("POST", "/api/dm/views", json={"project": project_id, "data": data})

    def views(self, project_id: int) -> list[dict[str, Any]]:
        return self.request("GET", "/api/dm/views", params={"project": project_id}) or []

    def ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        return self.request("GET", "/api/ml", params={"project": project_id}) or []

    def rename_ml_backend(
        self, backend: dict[str, Any], title: str, *, basic_auth: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """Gives the ML backend ``backend`` (a row of :meth:`ml_backends`) a new title.

        Label Studio re-checks the backend (``/health`` and ``/setup``) on every change, so the URL and
        project travel along; a basic-auth backend keeps its stored password when none is sent.
        """
        body: dict[str, Any] = {"project": backend["project"], "url": backend["url"], "title": title}
        if backend.get("auth_method") == "BASIC_AUTH":
            user, password = basic_auth or (backend.get("basic_auth_user") or "", "")
            body.update(auth_method="BASIC_AUTH", basic_auth_user=user, basic_auth_pass=password)
        return self.request("PATCH", f"/api/ml/{backend['id']}", json=body)

    def set_project_sampling(self, project_id: int, sampling: str) -> dict[str, Any]:
        """How the label stream picks the next task ("Sequential sampling", "Uncertainty sampling", ...)."""
        return self.request("PATCH", f"/api/projects/{project_id}", json={"sampling": sampling})

    def set_project_model_version(self, project_id: int, model_version: str) -> dict[str, Any]:
        """Which predictions prefill the labelling page: those whose ``model_version`` equals this.

        Label Studio refuses (HTTP 400) a version it has no predictions of and no ML backend titled so.
        """
        return self.request("PATCH", f"/api/projects/{project_id}", json={"model_version": model_version})

    def connect_ml_backend(
        self, project_id: int, url: str, title: str = "habla-ls whisper", **fields: Any
    ) -> dict[str, Any]:
        """Adds the ML backend at ``url`` to the project (or returns the one already there)."""
        for backend in self.ml_backends(project_id):
            if backend.get("url", "").rstrip("/") == url.rstrip("/"):
                return backend
        return self.request("POST", "/api/ml", json={"project": project_id, "url": url, "title": title, **fields})


def ext_id_filter(key: str) -> dict[str, Any]:
    return {"filter": EXT_ID_FILTER, "operator": "equal", "type": "String", "value": key}


def updated_filter(operator: str, when: datetime) -> dict[str, Any]:
    """A filter on the task's ``updated_at`` (operators ``greater``, ``less_or_equal``, ...)."""
    value = when.astimezone(UTC).strftime(DM_DATETIME_FORMAT)
    return {"filter": "filter:tasks:updated_at", "operator": operator, "type": "Datetime", "value": value}


def number_filter(column: str, operator: str, value: int) -> dict[str, Any]:
    """A filter on a numeric task column, e.g. ``number_filter("total_annotations", "greater", 0)``."""
    return {"filter": f"filter:tasks:{column}", "operator": operator, "type": "Number", "value": value}


def parse_time(value: str | None) -> datetime | None:
    """A Label Studio timestamp (ISO 8601, ``Z`` or an offset, with or without microseconds) as aware UTC."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def normalise_time(value: str | None) -> str:
    """One fixed-width spelling of a timestamp, so that stored values compare as strings and as times.

    Label Studio drops the fraction when the microseconds are 0 (``...:58Z`` vs ``...:58.000001Z``),
    which would break string ordering.
    """
    parsed = parse_time(value)
    return parsed.strftime(DM_DATETIME_FORMAT) if parsed else ""


def response_time(response: httpx.Response) -> datetime | None:
    """The server's clock when it answered (HTTP ``Date``, whole seconds, rounded down), or None."""
    header = response.headers.get("date")
    if not header:
        return None
    try:
        return parsedate_to_datetime(header).astimezone(UTC)
    except (TypeError, ValueError):
        return None


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip().splitlines()[0][:200] if response.text.strip() else "(no detail)"
    if isinstance(body, dict):
        for key in ("validation_errors", "detail", "message", "error"):
            if key in body:
                return json.dumps(body[key], ensure_ascii=False)[:300]
    return json.dumps(body, ensure_ascii=False)[:300]
