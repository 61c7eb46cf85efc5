"""Data Manager queries: the filter items and tab layouts Label Studio's task listings take."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sync.ls_times import DM_DATETIME_FORMAT

EXT_ID_FILTER = "filter:tasks:data.ext_id"


def ext_id_filter(key: str) -> dict[str, Any]:
    return {"filter": EXT_ID_FILTER, "operator": "equal", "type": "String", "value": key}


def updated_filter(operator: str, when: datetime) -> dict[str, Any]:
    """A filter on the task's ``updated_at`` (operators ``greater``, ``less_or_equal``, ...)."""
    value = when.astimezone(UTC).strftime(DM_DATETIME_FORMAT)
    return {"filter": "filter:tasks:updated_at", "operator": operator, "type": "Datetime", "value": value}


def number_filter(column: str, operator: str, value: int) -> dict[str, Any]:
    """A filter on a numeric task column, e.g. ``number_filter("total_annotations", "greater", 0)``."""
    return {"filter": f"filter:tasks:{column}", "operator": operator, "type": "Number", "value": value}


def view_data(
    title: str, filters: Sequence[dict[str, Any]] = (), conjunction: str = "and", ordering: Sequence[str] = ()
) -> dict[str, Any]:
    """A Data Manager tab's ``data``: what it is called, which tasks it shows and in which order."""
    return {"title": title, "ordering": list(ordering), "filters": {"conjunction": conjunction, "items": list(filters)}}
