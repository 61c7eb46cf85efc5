"""Reading a project's annotations in bulk (:class:`ExportMethods`, part of the client): Label Studio's JSON
export (by task ids, or a snapshot of every annotated task) and the Data Manager's task marks and counts,
which tell ``sync pull`` what changed since it last looked.

The SDK's export by task ids names its filter ``ids``, which Label Studio ignores (it reads ``ids[]``):
:meth:`ExportMethods.export_annotations` passes ``ids[]`` itself.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sync.ls_errors import LabelStudioError
from sync.ls_times import normalise_time, response_time
from sync.ls_transport import LabelStudioTransport

if TYPE_CHECKING:
    from label_studio_sdk.core.request_options import RequestOptions

# Django refuses query strings with more than 1,000 fields (DATA_UPLOAD_MAX_NUMBER_FIELDS).
EXPORT_IDS_CHUNK = 500
# One page for a whole listing of changed tasks: pages could shift while tasks change.
MARKS_PAGE_SIZE = 100_000
SNAPSHOT_POLL_SECONDS = 0.5


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


class ExportMethods(LabelStudioTransport):
    """The client's bulk reads of annotations (see :class:`sync.ls_client.LabelStudioClient`)."""

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

    def task_count(self, project_id: int) -> int:
        return self.count_tasks(project_id).tasks

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
