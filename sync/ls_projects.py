"""Label Studio projects and how they are set up: found or created by title, their local storage, Data
Manager tabs, ML backends, sampling and prefill version (:class:`ProjectMethods`, part of the client)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from sync.dm_filters import view_data
from sync.ls_errors import LabelStudioError
from sync.ls_transport import LabelStudioTransport

PROJECT_TITLE_MAX = 50


class ProjectMethods(LabelStudioTransport):
    """The client's calls about projects as a whole (see :class:`sync.ls_client.LabelStudioClient`)."""

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

    def set_project_sampling(self, project_id: int, sampling: str) -> dict[str, Any]:
        """How the label stream picks the next task ("Sequential sampling", "Uncertainty sampling", ...)."""
        return self.update_project(project_id, sampling=sampling)

    def set_project_model_version(self, project_id: int, model_version: str) -> dict[str, Any]:
        """Which predictions prefill the labelling page: those whose ``model_version`` equals this.

        Label Studio refuses (HTTP 400) a version it has no predictions of and no ML backend titled so.
        """
        return self.update_project(project_id, model_version=model_version)

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
            project=project_id, data=view_data(title, filters, conjunction, ordering), create=True,
        )

    def update_view(self, view_id: int, project_id: int, title: str, **layout: Any) -> dict[str, Any]:
        """Replaces a tab's title and layout (:meth:`create_view`'s filters, conjunction and ordering) in place:
        it keeps its id and its place among the tabs."""
        return self._sdk_call(
            f"updating view {view_id} of project {project_id}", self._sdk.views.with_raw_response.update,
            str(view_id), project=project_id, data=view_data(title, **layout),
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
