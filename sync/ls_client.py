"""A thin client for the parts of Label Studio's REST API that habla-ls uses.

Shared by ``sync push``/``sync pull``, the active-learning round and ``backend connect``. Errors are
:class:`LabelStudioError` with a one-line message that names the URL and the reason, never the token
(the token lives only in the ``Authorization`` header, which no message or log line includes).

Label Studio's SQLite backend locks under parallel writes, so the client is meant to be used from one
thread; imports are never retried automatically because an import is not idempotent (a retry after a
lost response would duplicate tasks; ``sync push`` recovers by looking tasks up by ``ext_id`` instead).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import httpx

log = logging.getLogger(__name__)

EXT_ID_FILTER = "filter:tasks:data.ext_id"
# Filters OR-ed into one task query: keeps the URL short and the SQL cheap.
EXT_ID_QUERY_CHUNK = 50
PROJECT_TITLE_MAX = 50


class LabelStudioError(RuntimeError):
    """Any failure talking to Label Studio; ``str()`` is one line without secrets."""


class LabelStudioUnreachable(LabelStudioError):
    pass


class LabelStudioAuthError(LabelStudioError):
    pass


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

    def iter_projects(self) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            answer = self.request("GET", "/api/projects", params={"page": page, "page_size": 100})
            results = answer.get("results", []) if isinstance(answer, dict) else answer
            yield from results
            if not isinstance(answer, dict) or not answer.get("next"):
                return
            page += 1

    def get_project(self, project_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/projects/{project_id}")

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project with exactly this title (the oldest, if several)."""
        matches = [p for p in self.iter_projects() if p.get("title") == title]
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
        """Label Studio's JSON export of the tasks that have annotations (incl. skipped/cancelled ones)."""
        params: list[tuple[str, Any]] = [("exportType", "JSON"), ("download_all_tasks", "false")]
        params += [("ids[]", i) for i in task_ids or ()]
        answer = self.request("GET", f"/api/projects/{project_id}/export", params=params)
        return answer if isinstance(answer, list) else []

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
