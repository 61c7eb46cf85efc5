"""What the watch is told and what it leaves behind: its options (:class:`WatchOptions`, the thresholds
that start the finish), its log and its state, and the backoff after failures.

Every step's outcome is one JSON line in ``<home>/reports/watch.jsonl`` (time, step, outcome, detail,
duration); ``<home>/watch.json`` holds the last pass, the next action and why, and the running watch's
process (``habla-ls status`` reads both). A failing step makes the next pass wait longer, doubling up to
:data:`BACKOFF_CAP`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from habla_ls.config import Settings
from habla_ls.finish_journal import append_jsonl
from habla_ls.finish_result import STARTED

LOG_FILE = "watch.jsonl"  # under <home>/reports
STATE_FILE = "watch.json"  # under <home>
BACKOFF_CAP = 3600.0  # seconds: the longest wait after repeated failures


def log_path(home: Path) -> Path:
    return Path(home) / "reports" / LOG_FILE


def state_path(home: Path) -> Path:
    return Path(home) / STATE_FILE


def backoff(interval: float, failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failures: interval, 2x, 4x, ... up to the cap."""
    if failures <= 0:
        return interval
    return min(interval * 2 ** (failures - 1), max(interval, BACKOFF_CAP))


@dataclass(frozen=True)
class WatchOptions:
    interval: float = 60.0
    min_corrections: int = 20
    min_minutes: float = 0.0  # 0: off
    train_config: Path | None = None
    once: bool = False
    force_promotion: bool = False
    config_file: Path | None = None  # the habla-ls.toml the watch was started with, passed on to the finish

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> WatchOptions:
        values = {
            "interval": settings.watch_interval,
            "min_corrections": settings.watch_min_corrections,
            "min_minutes": settings.watch_min_minutes,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def reached(self, count: int, minutes: float) -> bool:
        """Either threshold suffices; a threshold of 0 is off (both off: never by count)."""
        by_count = self.min_corrections > 0 and count >= self.min_corrections
        by_minutes = self.min_minutes > 0 and minutes >= self.min_minutes
        return count > 0 and (by_count or by_minutes)

    def threshold_text(self) -> str:
        parts = [f"{self.min_corrections} corrections"] if self.min_corrections > 0 else []
        if self.min_minutes > 0:
            parts.append(f"{self.min_minutes:g} min of corrected audio")
        return " or ".join(parts) or "no threshold (finish only when asked)"


class WatchLog:
    """``<home>/reports/watch.jsonl``, each outcome also echoed for people (a step's start only logged)."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None = None):
        self.path = path
        self.echo = echo or (lambda line: None)

    def write(self, step: str, outcome: str, detail: str = "", duration: float = 0.0) -> None:
        entry = append_jsonl(self.path, step, outcome, detail, duration)
        if outcome != STARTED:
            took = f" ({duration:.1f} s)" if duration >= 0.05 else ""
            self.echo(f"{entry['time']} {step}: {outcome}{': ' + detail if detail else ''}{took}")


def load_watch_state(home: Path) -> dict[str, Any]:
    try:
        data = json.loads(state_path(home).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def current_process_record() -> dict[str, Any]:
    """This process, as `watch.json` records the running watch (see :func:`watch_running`)."""
    from ml_backend.process_record import ProcessRecord

    return ProcessRecord.for_process(os.getpid(), 0, "watch").to_json()


def watch_running(state: dict[str, Any]) -> bool:
    """Whether the watch that `watch.json` names still runs (not a later process with its pid)."""
    from ml_backend.process_record import ProcessRecord, is_running

    record = state.get("process")
    if not isinstance(record, dict):
        return False
    try:
        return is_running(ProcessRecord.from_json(record))
    except (KeyError, TypeError, ValueError):
        return False
