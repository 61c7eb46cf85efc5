"""What `watch` counts as corrections since the last training, whoever trained last."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from habla_ls.config import Settings
from habla_ls.finish_journal import corrections_since_training
from training.registry import new_version, write_card


def _manifest(home: Path, annotated: dict[str, dt.datetime]) -> None:
    (home / "datasets").mkdir(parents=True)
    rows = [
        {"audio_path": f"/a/{key}.wav", "sha256": key, "transcript": f"frase {key}", "duration": 3.0,
         "segment_key": key, "annotated_at": when.isoformat(timespec="seconds")}
        for key, when in annotated.items()
    ]
    (home / "datasets" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _version(models: Path, name: str, parent: str | None) -> str:
    with new_version(models, name) as (version, staging):
        write_card(staging, {"version": version, "name": name, "parent": parent})
    return version


def test_a_training_outside_the_finish_restarts_the_count(tmp_path: Path) -> None:
    home = tmp_path / "home"
    now = dt.datetime.now(dt.UTC)
    early, late = now - dt.timedelta(hours=1), now + dt.timedelta(hours=1)
    _manifest(home, {"s1": early, "s2": early, "s3": late})
    settings = Settings(home=home)
    base = _version(settings.models_dir, "whisper-base", None)  # bootstrapped: not a training

    nothing_trained = corrections_since_training(settings, {})
    assert (nothing_trained.count, nothing_trained.since_version) == (3, None)
    assert nothing_trained.minutes == 3 * 3.0 / 60

    # `habla-ls train` by hand (or the demo, or the GPU trainer): what it saw no longer counts.
    trained = _version(settings.models_dir, "habla", base)
    after = corrections_since_training(settings, {})
    assert (after.count, after.since_version) == (1, trained)

    # A training the finish journaled later than that version: its own record decides again.
    journal = {"trained": {"version": "habla-v9", "at": late.isoformat(timespec="seconds"),
                           "rows": {}}}
    assert corrections_since_training(settings, journal).count == 3
