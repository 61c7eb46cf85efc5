"""The finish's journal, ``<home>/finish.json``, and what it says about the corrections.

- **Crash safety.** The journal (replaced atomically) records the run in progress: the manifest it trains
  on and the steps done. A run that was killed or stopped is resumed where it stopped by the next finish
  (an interrupted training resumes from its checkpoint when the data is the same); every step is safe to
  redo (pull and promote are idempotent, registry writes are atomic).
- **What was trained on.** After a training the journal keeps one digest per manifest row, so "human
  corrections since the last training" (what `watch` counts) is a comparison with the manifest, and a
  finish with nothing new to learn answers "up to date" instead of training again on the same data.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from habla_ls.config import Settings

log = logging.getLogger(__name__)

STATE_FILE = "finish.json"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def state_path(home: Path) -> Path:
    return Path(home) / STATE_FILE


def load_state(home: Path) -> dict[str, Any]:
    path = state_path(home)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # Written by atomic rename, so only a hand edit gets here: start over rather than guess.
        log.warning("%s: unreadable (%s); starting with no record of earlier finishes", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def save_state(home: Path, state: dict[str, Any]) -> None:
    write_json_atomic(state_path(home), state)


@dataclass(frozen=True)
class Manifest:
    fingerprint: str  # sha256 of the manifest's bytes ("" when there is none)
    rows: dict[str, tuple[str, float]]  # segment key -> (digest of audio + transcript, duration s)
    annotated_at: dict[str, str] = field(default_factory=dict)  # segment key -> the correction's time (ISO)

    @property
    def digests(self) -> dict[str, str]:
        return {key: digest for key, (digest, _) in self.rows.items()}


def read_manifest(settings: Settings) -> Manifest:
    from sync.manifest import MANIFEST_JSONL

    try:
        data = (settings.datasets_dir / MANIFEST_JSONL).read_bytes()
    except FileNotFoundError:
        return Manifest("", {})
    rows: dict[str, tuple[str, float]] = {}
    annotated_at: dict[str, str] = {}
    for line in data.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            row = json.loads(line)
            key = str(row.get("segment_key") or row["audio_path"])
            digest = hashlib.sha256(f"{row.get('sha256') or row['audio_path']}\0{row['transcript']}".encode()).hexdigest()[:16]
            rows[key] = (digest, float(row.get("duration") or 0.0))
            annotated_at[key] = str(row.get("annotated_at") or "")
    return Manifest(hashlib.sha256(data).hexdigest(), rows, annotated_at)


@dataclass(frozen=True)
class Corrections:
    """Usable human corrections in the manifest that the last training did not see (new or changed)."""

    count: int
    minutes: float
    since_version: str | None  # the version trained last (None: no training recorded)
    since: str | None  # when


def _trained_since(models_dir: Path, after: str | None) -> tuple[str, str] | None:
    """(version, created) of the newest version trained (it has a parent) after ``after``: a training this
    journal did not record (`habla-ls train` by hand, the GPU trainer, the demo)."""
    from ml_backend.registry import list_versions, read_card

    after = _utc(after)
    newest = None
    for version in list_versions(models_dir):
        card = read_card(models_dir / version)
        created = _utc(card.get("created"))
        if card.get("parent") and created and (after is None or created > after) and (newest is None or created > newest[1]):
            newest = (version, created)
    return newest


def _utc(stamp: Any) -> str | None:
    """An ISO time in UTC to the second, comparable as text (None when missing or unreadable)."""
    try:
        parsed = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC).isoformat(timespec="seconds") if parsed.tzinfo else None


def corrections_since_training(settings: Settings, state: dict[str, Any] | None = None) -> Corrections:
    """Corrections the last training did not see: new or changed since the training this journal recorded,
    and, when a version was trained outside it since, not annotated before that version was made."""
    state = load_state(settings.home) if state is None else state
    trained = state.get("trained") or {}
    seen = trained.get("rows") or {}
    manifest = read_manifest(settings)
    new = {key: seconds for key, (digest, seconds) in manifest.rows.items() if seen.get(key) != digest}
    version, since = trained.get("version"), trained.get("at")
    outside = _trained_since(settings.models_dir, since)
    if outside is not None:
        version, since = outside
        new = {key: seconds for key, seconds in new.items() if (_utc(manifest.annotated_at.get(key)) or "") > since}
    return Corrections(len(new), sum(new.values()) / 60.0, version, since)


def interrupted_run(settings: Settings) -> dict[str, Any] | None:
    """The journal of a finish that did not end (killed, stopped, or a step failed), if any."""
    run = load_state(settings.home).get("run")
    return run if isinstance(run, dict) else None


def append_jsonl(path: Path, step: str, outcome: str, detail: str = "", duration: float = 0.0) -> dict[str, Any]:
    """One JSON object per line (time, step, outcome, detail, duration); a line torn by a kill is
    skipped by readers. The watch's log and ``finish --log-jsonl`` share it."""
    entry = {"time": now_iso(), "step": step, "outcome": outcome, "detail": detail, "duration": round(duration, 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return entry
