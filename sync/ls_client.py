"""Label Studio as habla-ls uses it, through label-studio-sdk.

Shared by ``sync push``/``sync pull``, the active-learning round, the prefill choice, ``backend connect``
and the demo. One SDK client holds what every request needs: the base URL, the token (a legacy token,
or a personal access token: the SDK trades that JWT refresh token for short-lived access tokens by
itself), the timeouts and the retry policy. Two ways through it:

- an endpoint the SDK has a method for is called through that method (``with_raw_response``: the JSON
  as Label Studio sent it, so callers get plain dicts, timestamps as strings);
- the bulk paths, the project lookup every push and pull starts with, and what the SDK has no method
  for go through the SDK's own HTTP client (its client wrapper's): the Data Manager task listings, the
  task and prediction imports (bodies serialised once with :mod:`json`: the SDK's encoder and its models
  cost ~70 ms per 1,000 tasks each way), the project listing (the typed projects client imports ~70 ms
  of models) and local audio files. Same headers, base URL, timeouts and retries.

The SDK's export by task ids names its filter ``ids``, which Label Studio ignores (it reads ``ids[]``):
:meth:`LabelStudioClient.export_annotations` passes ``ids[]`` itself.

The client is :class:`label_studio_sdk.base_client.LabelStudioBase`, the SDK's generated client:
``LabelStudio`` adds helpers whose imports (pandas, jsf) cost ~1 s and ~130 MB in every command.

Errors are :class:`LabelStudioError` with one line naming the server, what was being done (the project
or task included) and the reason, never the token. Retries follow the SDK's policy (connection refused
or dropped, HTTP 5xx/408/409/429) only for requests that can be repeated; a request that creates
something (an import above all) is sent once: after a dropped connection it may have happened, and a
retry would duplicate tasks. ``sync push`` recovers by looking tasks up by ``ext_id`` instead.
Label Studio's SQLite backend locks under parallel writes, so writes come from one thread; reads may
overlap from a second one (httpx's client can be shared between threads and the SDK refreshes a token
under a lock): ``sync pull`` counts and lists changed tasks while it parses a snapshot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from label_studio_sdk.core.request_options import RequestOptions

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
CONNECT_TIMEOUT = 10.0
# Requests that create something are sent once (see the module docstring).
SEND_ONCE: RequestOptions = {"max_retries": 0}
JSON_HEADERS = {"Content-Type": "application/json"}
TOKEN_HINT = (
    "check LABEL_STUDIO_API_KEY (a legacy token, which needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the "
    "server, or a personal access token from Account & Settings)"
)


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
        # Imported here: the SDK (pydantic, jwt) costs ~0.1 s, paid only by commands that talk to Label Studio.
        from label_studio_sdk.base_client import LabelStudioBase
        from label_studio_sdk.core.api_error import ApiError
        from label_studio_sdk.core.parse_error import ParsingError

        self._sdk_errors = (ApiError, ParsingError)
        self.url = url.rstrip("/")
        http = httpx.Client(timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT))
        try:
            # timeout=None: the httpx client's own (long reads, short connects) applies to every request.
            self._sdk = LabelStudioBase(base_url=self.url, api_key=token, httpx_client=http, max_retries=retries)
        except ApiError as exc:  # the SDK refuses an expired personal access token before any request
            http.close()
            raise LabelStudioAuthError(
                f"Label Studio at {self.url}: the token was refused before any request ({_api_detail(exc.body)}): {TOKEN_HINT}"
            ) from None
        self._httpx = http
        self._http = self._sdk._client_wrapper.httpx_client  # the SDK's HTTP client: auth, base URL, retries
        self._answers = threading.local()  # per thread: the server's clock at its latest answer

    @classmethod
    def from_settings(cls, settings: Any) -> LabelStudioClient:
        """From :class:`habla_ls.config.Settings` (raises ``ConfigError`` when no token is configured)."""
        return cls(settings.label_studio_url, settings.require_api_key())

    def __repr__(self) -> str:
        return f"LabelStudioClient({self.url!r})"

    @property
    def sdk(self) -> Any:
        """The label-studio-sdk client underneath, for calls habla-ls has no method for (its errors are
        the SDK's own, not :class:`LabelStudioError`)."""
        return self._sdk

    def close(self) -> None:
        self._httpx.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        what: str | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One call through the SDK's HTTP client; the JSON answer (``None`` when empty).

        For endpoints the SDK has no method for. ``idempotent`` (default: GET, HEAD, PUT, DELETE) allows
        retries; ``what`` names the action in errors (default: method and path).
        """
        response = self.response(method, path, idempotent=idempotent, what=what, params=params, json=json, headers=headers)
        return self._json(response, what or f"{method} {path}")

    def response(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        what: str | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Like :meth:`request`, the raw answer (status checked)."""
        idempotent = method in ("GET", "HEAD", "PUT", "DELETE") if idempotent is None else idempotent
        what = what or f"{method} {path}"
        content = None
        if json is not None:
            content = _dumps(json)
            headers = {**JSON_HEADERS, **(headers or {})}
        try:
            response = self._http.request(
                path.lstrip("/"),
                method=method,
                params=params,
                content=content,
                headers=headers,
                request_options=None if idempotent else SEND_ONCE,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        except self._sdk_errors as exc:  # raised by the SDK's token refresh
            raise self._refused(exc.status_code, _api_detail(exc.body), what) from None
        if response.status_code >= 400:
            raise self._refused(response.status_code, _error_detail(response), what)
        self._answers.time = response_time(response)
        return response

    def answered_at(self) -> datetime | None:
        """The server's clock (HTTP ``Date``) at the latest answer this thread had (downloads aside), or None."""
        return getattr(self._answers, "time", None)

    def _sdk_call(self, what: str, call: Callable[..., Any], *args: Any, create: bool = False, **kwargs: Any) -> Any:
        """Runs one SDK method (a ``with_raw_response`` one); the JSON Label Studio answered, or None.
        ``create``: the call makes something, so it is sent once."""
        try:
            answer = call(*args, request_options=SEND_ONCE if create else None, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        except self._sdk_errors as exc:
            status = exc.status_code
            if status is not None and status < 400:
                raise LabelStudioError(f"Label Studio at {self.url}: {what} answered non-JSON") from None
            raise self._refused(status, _api_detail(exc.body), what) from None
        self._answers.time = response_time(answer.response)
        return self._json(answer.response, what)

    def _unreachable(self, exc: httpx.TransportError) -> LabelStudioUnreachable:
        reason = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:120]
        return LabelStudioUnreachable(f"Label Studio at {self.url} is unreachable ({reason})")

    def _refused(self, status: int | None, detail: str, what: str) -> LabelStudioError:
        if status == 401:
            return LabelStudioAuthError(f"Label Studio at {self.url} refused the token (HTTP 401) while {what}: {TOKEN_HINT}")
        if status == 403:
            return LabelStudioAuthError(f"Label Studio at {self.url}: {what} is forbidden for this token (HTTP 403)")
        return LabelStudioError(f"Label Studio at {self.url}: {what} failed with HTTP {status}: {detail}")

    def _json(self, response: httpx.Response, what: str) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise LabelStudioError(f"Label Studio at {self.url}: {what} answered non-JSON") from None

    def whoami(self) -> dict[str, Any]:
        """Checks that the server is reachable and accepts the token."""
        return self._sdk_call("checking the token", self._sdk.users.with_raw_response.whoami)

    def version(self) -> str:
        info = self._sdk_call("asking its version", self._sdk.versions.with_raw_response.get) or {}
        return str(info.get("release") or info.get("label-studio-os-package", {}).get("version", "unknown"))

    # -- projects ------------------------------------------------------------------------------------

    def iter_projects(self, *, fields: str | None = "id,title", title: str | None = None) -> Iterator[dict[str, Any]]:
        """Projects (those whose title contains ``title``, if given): only the ``fields`` asked for,
        which spares the server the per-project counts (0.5 s -> 0.1 s with three projects of 10,000
        tasks); count fields such as ``task_number`` cost only what they count.

        Every push and pull starts here, so through the SDK's HTTP client: its projects client would
        import ~70 ms of response models into every command for one listing (and its pager asks for
        a page past the last).
        """
        params: dict[str, Any] = {"page_size": 100, "include": fields, "title": title}
        page = 1
        while True:
            answer = self.request("GET", "api/projects/", params={**params, "page": page}, what="listing projects")
            yield from answer.get("results", []) if isinstance(answer, dict) else answer or []
            if not isinstance(answer, dict) or not answer.get("next"):
                return
            page += 1

    def get_project(self, project_id: int) -> dict[str, Any]:
        return self._sdk_call(f"reading project {project_id}", self._sdk.projects.with_raw_response.get, project_id)

    def find_project(self, title: str, *, fields: str = "id,title") -> dict[str, Any] | None:
        """The project with exactly this title (the oldest, if several), with ``fields`` only (e.g.
        ``"id,title,label_config,task_number"``: what a push needs, in one call)."""
        if "id" not in fields.split(",") or "title" not in fields.split(","):
            fields = f"id,title,{fields}"
        matches = [p for p in self.iter_projects(fields=fields, title=title) if p.get("title") == title]
        return min(matches, key=lambda p: p["id"]) if matches else None

    def create_project(self, title: str, label_config: str, **fields: Any) -> dict[str, Any]:
        if not 3 <= len(title) <= PROJECT_TITLE_MAX:
            raise LabelStudioError(f"project title {title!r} must be 3 to {PROJECT_TITLE_MAX} characters (Label Studio's limit)")
        return self._sdk_call(
            f"creating project {title!r}", self._sdk.projects.with_raw_response.create,
            title=title, label_config=label_config, create=True, **fields,
        )

    def ensure_project(
        self, title: str, label_config: str, *, fields: str = "id,title", **create_fields: Any
    ) -> tuple[dict[str, Any], bool]:
        """(project, created): finds the project by title (with ``fields``), else creates it."""
        found = self.find_project(title, fields=fields)
        if found is not None:
            return found, False
        return self.create_project(title, label_config, **create_fields), True

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        """Changes project settings (``label_config``, ``sampling``, ``show_collab_predictions``, ...)."""
        what = f"changing {', '.join(sorted(fields))} of project {project_id}"
        return self._sdk_call(what, self._sdk.projects.with_raw_response.update, project_id, **fields)

    def delete_project(self, project_id: int) -> None:
        self._sdk_call(f"deleting project {project_id}", self._sdk.projects.with_raw_response.delete, project_id)

    def task_count(self, project_id: int) -> int:
        return self.count_tasks(project_id).tasks

    # -- storage -------------------------------------------------------------------------------------

    def local_storages(self, project_id: int) -> list[dict[str, Any]]:
        return self._sdk_call(
            f"listing the local storages of project {project_id}",
            self._sdk.import_storage.local.with_raw_response.list, project=project_id,
        ) or []

    def ensure_local_storage(self, project_id: int, path: str, title: str = "habla-ls archive") -> dict[str, Any]:
        """A Local Files storage on ``path`` (absolute, below the server's document root) so that
        ``/data/local-files/?d=...`` URLs in tasks are served. Never synced: tasks are imported by us."""
        for storage in self.local_storages(project_id):
            if storage.get("path", "").rstrip("/") == path.rstrip("/"):
                return storage
        return self._sdk_call(
            f"adding a local storage on {path} to project {project_id}",
            self._sdk.import_storage.local.with_raw_response.create,
            project=project_id, path=path, title=title, use_blob_urls=False, create=True,
        )

    def validate_local_storage(self, project_id: int, path: str, title: str = "habla-ls check") -> None:
        """Asks whether a Local Files storage on ``path`` would be accepted (nothing is created)."""
        self._sdk_call(
            f"checking a local storage on {path} for project {project_id}",
            self._sdk.import_storage.local.with_raw_response.validate,
            project=project_id, path=path, title=title,
        )

    def fetch_file(self, url_path: str, *, first_bytes: int | None = None) -> httpx.Response:
        """A file Label Studio serves (``/data/local-files/?d=...``) as the labelling page would fetch it;
        with ``first_bytes`` only its start. Not an API endpoint: through the SDK's HTTP client."""
        headers = {"Range": f"bytes=0-{first_bytes - 1}"} if first_bytes else None
        return self.response("GET", url_path, headers=headers, what=f"fetching {url_path}")

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

    def _tasks_page(self, what: str, params: dict[str, Any]) -> httpx.Response | None:
        """One Data Manager page (None past the last one, which Django REST answers with 404)."""
        try:
            return self.response("GET", "api/tasks/", params=params, what=what)
        except LabelStudioError as exc:
            if "HTTP 404" in str(exc) and params.get("page", 1) > 1:
                return None
            raise

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
            what = f"exporting {len(chunk) or 'the annotated'} tasks of project {project_id}"
            # The SDK names the id filter ``ids``; Label Studio reads ``ids[]``: passed as an extra parameter.
            options: RequestOptions = {"additional_query_parameters": {"ids[]": chunk}} if chunk else {}
            answer = self._download(
                what, self._sdk.projects.exports.with_raw_response.download_sync, project_id,
                export_type="JSON", download_all_tasks=False, request_options=options,
            )
            tasks += answer if isinstance(answer, list) else []
        return tasks

    def _download(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The JSON of an SDK download (a streamed answer), read whole."""
        return self._parse(self._download_body(what, call, *args, **kwargs), what)

    def _download_body(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
        try:
            with call(*args, **kwargs) as answer:
                return b"".join(answer.data)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        except self._sdk_errors as exc:
            raise self._refused(exc.status_code, _api_detail(exc.body), what) from None

    def _parse(self, body: bytes, what: str) -> Any:
        try:
            return json.loads(body) if body else None
        except ValueError:
            raise LabelStudioError(f"Label Studio at {self.url}: {what} answered non-JSON") from None

    def export_snapshot(self, project_id: int, *, timeout: float = 3600.0) -> list[dict[str, Any]]:
        """Every task that has an annotation (incl. skipped/cancelled), through an export snapshot.

        Same task JSON as :meth:`export_annotations`, about 1.4x cheaper on the server: predictions and
        drafts come as ids. The snapshot file is deleted afterwards so repeated pulls leave nothing
        behind in Label Studio. Waits for it when the server builds exports in the background (a server
        with a job queue answers before the snapshot is ready).
        """
        return self.parse_snapshot(self.read_snapshot(project_id, timeout=timeout), project_id)

    def parse_snapshot(self, body: bytes, project_id: int) -> list[dict[str, Any]]:
        """The tasks in what :meth:`read_snapshot` returned, parsed one at a time: ``json.loads`` of the
        whole text would hold the GIL for ~0.1 s per 10,000 tasks, stalling a thread that reads meanwhile."""
        try:
            text = body.decode("utf-8")
            del body  # the caller hands the bytes over: ~1 KB per task less while the tasks are built
            return parse_json_array(text) if text else []
        except ValueError:
            what = f"the export snapshot of project {project_id}"
            raise LabelStudioError(f"Label Studio at {self.url}: {what} is not a JSON list") from None

    def read_snapshot(self, project_id: int, *, timeout: float = 3600.0) -> bytes:
        """:meth:`export_snapshot` as the JSON text Label Studio wrote, not parsed (:meth:`parse_snapshot`),
        so that another thread can parse it while this one goes on asking Label Studio."""
        exports = self._sdk.projects.exports.with_raw_response
        export = self._sdk_call(
            f"creating an export of project {project_id}", exports.create, project_id,
            title="habla-ls sync pull",
            task_filter_options={"only_with_annotations": True},
            serialization_options={
                "drafts": {"only_id": True},
                "predictions": {"only_id": True},
                "annotations__completed_by": {"only_id": True},
                "include_annotation_history": False,
            },
            create=True,
        ) or {}
        export_id = export.get("id")
        if export_id is None:
            raise LabelStudioError(f"Label Studio at {self.url}: creating an export of project {project_id} answered no id")
        what = f"reading export {export_id} of project {project_id}"
        try:
            deadline = time.monotonic() + timeout
            while export.get("status") not in ("completed", "failed"):
                if time.monotonic() > deadline:
                    raise LabelStudioError(f"Label Studio at {self.url}: export {export_id} not ready after {timeout:.0f} s")
                time.sleep(SNAPSHOT_POLL_SECONDS)
                export = self._sdk_call(what, exports.get, project_id, export_id) or {}
            if export.get("status") == "failed":
                raise LabelStudioError(f"Label Studio at {self.url}: export {export_id} of project {project_id} failed")
            return self._download_body(what, exports.download, project_id, export_id, export_type="JSON")
        finally:
            with contextlib.suppress(LabelStudioError):
                self._sdk_call(f"deleting export {export_id} of project {project_id}", exports.delete, project_id, export_id)

    def task_marks(
        self, project_id: int, *, filters: Sequence[dict[str, Any]] = (), conjunction: str = "and"
    ) -> list[TaskMark]:
        """(id, updated_at, annotation counters) of the tasks matching ``filters``.

        Asks the Data Manager for these four fields only (``include``), all in one page so that rows
        cannot shift between pages while tasks change; ~0.3 ms per row on the server.
        """
        marks: list[TaskMark] = []
        page = 1
        what = f"listing the changed tasks of project {project_id}"
        while True:
            response = self._tasks_page(what, self._dm_params(project_id, filters, conjunction, MARKS_PAGE_SIZE, page))
            answer = (self._json(response, what) if response is not None else None) or {}
            rows = answer.get("tasks", [])
            marks += [TaskMark.from_row(row) for row in rows]
            if not rows or len(marks) >= int(answer.get("total", 0)):
                return marks
            page += 1

    def count_tasks(
        self, project_id: int, *, filters: Sequence[dict[str, Any]] = (), conjunction: str = "and"
    ) -> TaskCount:
        """How many tasks match ``filters``, their non-cancelled annotations in all, and the server's time."""
        what = f"counting the tasks of project {project_id}"
        response = self.response("GET", "api/tasks/", params=self._dm_params(project_id, filters, conjunction, 1, 1), what=what)
        answer = self._json(response, what) or {}
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
            # Else the storage of each task's data URLs is looked up: ~15 % of a listing, for data not asked for.
            "resolve_uri": "false",
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
        return self._sdk_call(
            f"adding view {title!r} to project {project_id}", self._sdk.views.with_raw_response.create,
            project=project_id, data=_view_data(title, filters, conjunction, ordering), create=True,
        )

    def update_view(self, view_id: int, project_id: int, title: str, **layout: Any) -> dict[str, Any]:
        """Replaces a tab's title and layout (:meth:`create_view`'s filters, conjunction and ordering) in place:
        it keeps its id and its place among the tabs."""
        return self._sdk_call(
            f"updating view {view_id} of project {project_id}", self._sdk.views.with_raw_response.update,
            str(view_id), project=project_id, data=_view_data(title, **layout),
        )

    def views(self, project_id: int) -> list[dict[str, Any]]:
        return self._sdk_call(
            f"listing the views of project {project_id}", self._sdk.views.with_raw_response.list, project=project_id
        ) or []

    def delete_view(self, view_id: int) -> None:
        self._sdk_call(f"deleting view {view_id}", self._sdk.views.with_raw_response.delete, str(view_id))

    def ml_backends(self, project_id: int) -> list[dict[str, Any]]:
        return self._sdk_call(
            f"listing the ML backends of project {project_id}", self._sdk.ml.with_raw_response.list, project=project_id
        ) or []

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
        return self.update_ml_backend(int(backend["id"]), **body)

    def update_ml_backend(self, backend_id: int, **fields: Any) -> dict[str, Any]:
        return self._sdk_call(f"updating ML backend {backend_id}", self._sdk.ml.with_raw_response.update, backend_id, **fields)

    def set_project_sampling(self, project_id: int, sampling: str) -> dict[str, Any]:
        """How the label stream picks the next task ("Sequential sampling", "Uncertainty sampling", ...)."""
        return self.update_project(project_id, sampling=sampling)

    def set_project_model_version(self, project_id: int, model_version: str) -> dict[str, Any]:
        """Which predictions prefill the labelling page: those whose ``model_version`` equals this.

        Label Studio refuses (HTTP 400) a version it has no predictions of and no ML backend titled so.
        """
        return self.update_project(project_id, model_version=model_version)

    def connect_ml_backend(
        self, project_id: int, url: str, title: str = "habla-ls whisper", **fields: Any
    ) -> dict[str, Any]:
        """Adds the ML backend at ``url`` to the project, or updates the one already there (its title,
        auth, ...). Label Studio checks the backend's ``/health`` and ``/setup`` on the way."""
        for backend in self.ml_backends(project_id):
            if backend.get("url", "").rstrip("/") == url.rstrip("/"):
                return self.update_ml_backend(int(backend["id"]), project=project_id, url=url, title=title, **fields)
        return self._sdk_call(
            f"adding the ML backend at {url} to project {project_id}", self._sdk.ml.with_raw_response.create,
            project=project_id, url=url, title=title, create=True, **fields,
        )


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def parse_json_array(text: str) -> list[Any]:
    """``json.loads`` of a JSON array, one element per call into the decoder (ValueError if not an array)."""
    decoder = json.JSONDecoder()
    space = _JSON_SPACE.match
    start = space(text).end()
    if text[start : start + 1] != "[":
        raise ValueError("not a JSON array")
    items: list[Any] = []
    at = space(text, start + 1).end()
    if text[at : at + 1] == "]":
        return items if space(text, at + 1).end() == len(text) else _trailing()
    while True:
        item, at = decoder.raw_decode(text, at)
        items.append(item)
        at = space(text, at).end()
        separator = text[at : at + 1]
        if separator == "]":
            return items if space(text, at + 1).end() == len(text) else _trailing()
        if separator != ",":
            raise ValueError(f"expected ',' or ']' at {at}")
        at = space(text, at + 1).end()


def _trailing() -> list[Any]:
    raise ValueError("extra data after the JSON array")


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


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


def _api_detail(body: Any) -> str:
    """The reason in an error body (parsed JSON, or text) as one short line."""
    if isinstance(body, dict):
        for key in ("validation_errors", "detail", "message", "error"):
            if key in body:
                return json.dumps(body[key], ensure_ascii=False)[:300]
    if isinstance(body, str):
        text = body.strip()
        return text.splitlines()[0][:200] if text else "(no detail)"
    if body is None:
        return "(no detail)"
    return json.dumps(body, ensure_ascii=False, default=str)[:300]


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return _api_detail(body)


def _view_data(
    title: str, filters: Sequence[dict[str, Any]] = (), conjunction: str = "and", ordering: Sequence[str] = ()
) -> dict[str, Any]:
    """A Data Manager tab's ``data``: what it is called, which tasks it shows and in which order."""
    return {"title": title, "ordering": list(ordering), "filters": {"conjunction": conjunction, "items": list(filters)}}
