"""``habla-ls backend ...`` as the user runs it: the ML backend's commands, plus Label Studio's side.

``ml_backend`` imports neither ``sync`` nor ``training``; this group hands every command over to
:data:`ml_backend.cli.backend_group` unchanged, except ``connect``: its options stay, but the talking to
Label Studio goes through :class:`sync.ls_client.LabelStudioClient` (label-studio-sdk, one place for
auth and errors), and a successful connect is followed by the prefill decision of
:mod:`habla_ls.prefill` (the project's prefill version and the backend's title).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any

import click

from habla_ls.cli_wrapping import WrappingGroup
from ml_backend.cli import backend_group as server_group

if TYPE_CHECKING:
    from sync.ls_client import LabelStudioClient


def _project_id(client: LabelStudioClient, project: str) -> int:
    """A project named by id or by title."""
    from sync.ls_errors import LabelStudioError

    if project.isdigit():
        try:
            return int(client.get_project(int(project))["id"])
        except LabelStudioError as exc:
            if "HTTP 404" not in str(exc):
                raise  # a title made of digits is still looked up below
    found = client.find_project(project)
    if found is None:
        raise LabelStudioError(f"Label Studio at {client.url} has no project titled {project!r}")
    return int(found["id"])


def connect_backend(
    client: LabelStudioClient,
    project: str,
    backend_url: str,
    *,
    title: str | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Registers (or updates) the backend on a project; Label Studio checks /health and /setup on the way.

    The title defaults to the version the backend serves (see :func:`ml_backend.cli.served_title`). Also
    switches the project's "use predictions to prelabel tasks" on (``show_collab_predictions``): with it,
    opening a task that has no prediction makes Label Studio ask the backend. The backend is not
    interactive: interactive pre-annotations are not applied to the page by themselves.
    """
    from ml_backend.cli import served_title

    project_id = _project_id(client, project)
    fields: dict[str, Any] = {"is_interactive": False}
    if basic_auth:
        fields.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
    backend = client.connect_ml_backend(project_id, backend_url, title=title or served_title(backend_url), **fields)
    client.update_project(project_id, show_collab_predictions=True)
    return backend


def through_label_studio_client(command: click.Command) -> click.Command:
    """``connect`` with the same options, run through the SDK client, then the prefill decision."""
    wrapped = copy.copy(command)

    @click.pass_obj
    def callback(settings: Any, project: str, backend_url: str, title: str | None) -> None:
        from habla_ls.config import ConfigError
        from habla_ls.prefill import after_serving_change
        from sync.ls_client import LabelStudioClient
        from sync.ls_errors import LabelStudioError

        user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
        try:
            with LabelStudioClient.for_project(settings.label_studio_project()) as client:
                backend = connect_backend(
                    client, project, backend_url, title=title, basic_auth=(user, password) if user and password else None
                )
        except (ConfigError, LabelStudioError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        click.echo(
            f"connected ML backend {backend.get('id')} ({backend_url}, titled {backend.get('title')!r}) to project "
            f"{project!r}; state {backend.get('state')}"
        )
        project_id = int(project) if project.isdigit() else None
        if project and project_id is None:
            settings = dataclasses.replace(settings, project_title=project)
        # The backend answers for missing predictions from now on: nothing to transcribe here.
        after_serving_change(settings, predict=False, echo=click.echo, project_id=project_id)

    wrapped.callback = callback
    return wrapped


backend_group = WrappingGroup(server_group, {"connect": through_label_studio_client})
