"""After the served version changed (promote, rollback, the finish, a backend connected): the unlabelled
tasks get its predictions, then the prefill is decided again and the page's checks follow it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from habla_ls.config import ConfigError, Settings
from habla_ls.corrections import project_id_of
from habla_ls.predict import predict_unlabelled
from habla_ls.prefill import PrefillDecision, describe_decision, refresh
from sync.ls_client import LabelStudioClient
from sync.ls_errors import LabelStudioError


def after_serving_change(
    settings: Settings,
    *,
    predict: bool = True,
    echo: Callable[[str], Any] = print,
    batch_size: int = 8,
    project_id: int | None = None,
) -> PrefillDecision | None:
    """After promote/rollback: predict what the served version lacks, then decide the prefill.

    Never fails the command that changed the model: without a token or a reachable Label Studio it says
    so in one line and returns None.
    """
    if not settings.label_studio_api_key:
        echo("prefill: Label Studio is not configured (no LABEL_STUDIO_API_KEY); its prefill was not updated")
        return None
    try:
        with LabelStudioClient.for_project(settings.label_studio_project()) as client:
            project_id = project_id if project_id is not None else project_id_of(settings, client)
            if predict:
                for line in predict_unlabelled(settings, client, project_id=project_id, batch_size=batch_size).lines():
                    echo(line)
            decision = refresh(settings, client=client, project_id=project_id)
    except (ConfigError, LabelStudioError, LookupError, RuntimeError) as exc:
        # LookupError: no model served (RegistryError); RuntimeError: it cannot be loaded (EngineError).
        echo(f"prefill: not updated ({exc})")
        return None
    for line in describe_decision(decision):
        echo(line)
    return decision
