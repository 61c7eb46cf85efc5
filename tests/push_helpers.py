"""What the push tests read back from Label Studio."""

from __future__ import annotations

from sync.ls_client import LabelStudioClient
from sync.ls_errors import LabelStudioError


def project_tasks(client: LabelStudioClient, project_id: int) -> list[dict]:
    return list(client.iter_tasks(project_id, all_fields=True, page_size=1000))


def project_id_by_title(client: LabelStudioClient, title: str) -> int | None:
    project = client.find_project(title)
    return int(project["id"]) if project else None


def served_audio(client: LabelStudioClient, task: dict) -> bytes | None:
    """The task's audio as Label Studio serves it to the labelling page, or None."""
    try:
        return client.fetch_file(task["data"]["audio"]).content
    except LabelStudioError:
        return None
