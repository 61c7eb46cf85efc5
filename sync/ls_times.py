"""Label Studio's timestamps: parsed, compared and sent back in the one format its Data Manager reads."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

# The Data Manager parses datetime filter values with exactly this format.
DM_DATETIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


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
