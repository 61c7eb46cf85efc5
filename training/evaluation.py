"""What evaluating one model version yields: its scores per set, and what its model card learns from them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.metrics import CorpusReport
from training.paired_sets import DECODED_ALONE, REGRESSION_SET, TEST_SET


@dataclass
class ModelEvaluation:
    """One version scored: a corpus report per set, the ids of the sets, how its clips were decoded."""

    version: str
    model_path: Path
    backend: str
    beam_size: int
    decoding: str = DECODED_ALONE
    reports: dict[str, CorpusReport] = field(default_factory=dict)
    set_ids: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    audio_seconds: float = 0.0
    elapsed_seconds: float = 0.0
    registered: bool = False

    @property
    def test_wer(self) -> float | None:
        return self.reports[TEST_SET].wer if TEST_SET in self.reports else None

    @property
    def regression_wer(self) -> float | None:
        return self.reports[REGRESSION_SET].wer if REGRESSION_SET in self.reports else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model_path": str(self.model_path),
            "backend": self.backend,
            "beam_size": self.beam_size,
            "decoding": self.decoding,
            "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "audio_seconds": round(self.audio_seconds, 2),
            "elapsed_seconds": round(self.elapsed_seconds, 2),
            "real_time_factor": round(self.audio_seconds / self.elapsed_seconds, 2) if self.elapsed_seconds else None,
            "set_ids": self.set_ids,
            "skipped": self.skipped,
            "sets": {name: report.to_dict() for name, report in self.reports.items()},
        }


def card_fields(evaluation: ModelEvaluation, report_path: Path | None = None) -> dict[str, Any]:
    """What the model card learns from an evaluation; the promotion gate follows ``eval_report``."""
    fields: dict[str, Any] = {"evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "eval_beam_size": evaluation.beam_size}
    if report_path is not None:
        fields["eval_report"] = str(Path(report_path).resolve())
    test = evaluation.reports.get(TEST_SET)
    if test is not None:
        fields.update(
            test_wer_raw=test.levels["raw"].wer,
            test_wer_normalised=test.levels["normalised"].wer,
            test_wer_accent_insensitive=test.levels["accent_insensitive"].wer,
            test_cer_normalised=test.levels["normalised"].cer,
            test_clips=test.utterances,
            test_split_id=evaluation.set_ids[TEST_SET],
        )
    regression = evaluation.reports.get(REGRESSION_SET)
    if regression is not None:
        fields.update(
            regression_wer=regression.wer,
            regression_cer=regression.cer,
            regression_clips=regression.utterances,
            regression_set_id=evaluation.set_ids[REGRESSION_SET],
        )
    return fields
