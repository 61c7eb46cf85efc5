"""``habla-ls backend ...`` as the user runs it: the ML backend's commands, plus Label Studio's prefill.

``ml_backend`` imports neither ``sync`` nor ``training``; this group hands every command over to
:data:`ml_backend.cli.backend_group` unchanged, except that a successful ``connect`` is followed by the
prefill decision of :mod:`habla_ls.prefill` (the project's prefill version and the backend's title).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any

import click

from habla_ls.cli_models import WrappingGroup
from ml_backend.cli import backend_group as server_group


def with_prefill(command: click.Command) -> click.Command:
    wrapped = copy.copy(command)
    original = command.callback
    assert original is not None

    @functools.wraps(original)
    def callback(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        from habla_ls.prefill import after_serving_change

        settings = click.get_current_context().obj
        project = str(kwargs.get("project") or "")
        project_id = int(project) if project.isdigit() else None
        if project and project_id is None:
            settings = dataclasses.replace(settings, project_title=project)
        # The backend answers for missing predictions from now on: nothing to transcribe here.
        after_serving_change(settings, predict=False, echo=click.echo, project_id=project_id)
        return result

    wrapped.callback = callback
    return wrapped


backend_group = WrappingGroup(server_group, {"connect": with_prefill})
