"""What ``habla-ls status`` reports, as plain data (read-only: no server needed)."""

from __future__ import annotations

from typing import Any

from habla_ls.config import Settings
from habla_ls.prefill import load as load_prefill
from ml_backend.registry import list_versions, read_card, read_current
from sync.ledger import Ledger

CARD_FIELDS = ("version", "parent", "base_model", "created", "train_clips", "test_wer_raw", "test_wer_normalised", "regression_wer")


def collect_status(settings: Settings) -> dict[str, Any]:
    counts = {"archived": 0, "pushed": 0, "annotated": 0}
    if settings.ledger_path.exists():
        with Ledger(settings.ledger_path) as ledger:
            counts = ledger.counts(ledger.project_id(settings.label_studio_url, settings.project_title))
    versions = []
    for version in list_versions(settings.models_dir):
        card = read_card(settings.models_dir / version)
        versions.append({k: card.get(k) for k in CARD_FIELDS} | {"version": version})
    return {
        "home": str(settings.home),
        "counts": counts,
        "served_version": read_current(settings.models_dir),
        "versions": versions,
        # The last prefill decision (per-source WER on corrected tasks), as saved by round/promote/connect.
        "prefill": decision.to_dict() if (decision := load_prefill(settings.home)) is not None else None,
    }
