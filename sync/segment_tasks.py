"""A Habla segment as Label Studio sees it (the task: its audio, what the page shows, Habla's transcript as
a prediction) and as the ledger records it once its audio is archived."""

from __future__ import annotations

from typing import Any

from sync.archive import ArchivedClip
from sync.changed_audio import Stat
from sync.habla import Segment, prefill_score
from sync.labelling_config import (
    DATA_CONFIDENCE,
    DATA_DURATION,
    DATA_EXT_ID,
    DATA_RECORDED_AT,
    DATA_SEGMENT,
    DATA_SESSION,
    DATA_SHA256,
    DATA_SPEAKER,
    DATA_TRANSLATION,
    EMPTY_CHECKS,
    recorded_at_text,
    transcription_result,
)
from sync.ledger_records import SegmentRecord


def context_data(segment: Segment) -> dict[str, Any]:
    """The task data the labelling page shows about where a clip comes from (may change as Habla
    writes its files: a live session gets its metadata, and so its translations, when it stops)."""
    return {
        DATA_SESSION: segment.session,
        DATA_SEGMENT: segment.filename,
        DATA_SPEAKER: segment.speaker,
        DATA_RECORDED_AT: recorded_at_text(segment.recorded_at, exact=segment.recorded_at_exact),
        DATA_TRANSLATION: segment.translation or "",
    }


def build_task(segment: Segment, clip: ArchivedClip, audio: dict[str, Any]) -> dict[str, Any]:
    """The Label Studio task for one segment, with Habla's best transcript as a prediction. ``audio``:
    what the page plays (:func:`sync.listening.page_audio`)."""
    task: dict[str, Any] = {
        "data": {
            **audio,
            DATA_EXT_ID: segment.key,
            **context_data(segment),
            DATA_CONFIDENCE: "",  # the served model's, written by a round
            **EMPTY_CHECKS,
            DATA_DURATION: round(clip.duration, 3),
            DATA_SHA256: clip.sha256,
        }
    }
    prediction = build_prediction(segment)
    if prediction is not None:
        task["predictions"] = [prediction]
    return task


def build_prediction(segment: Segment) -> dict[str, Any] | None:
    if not segment.transcript:
        return None  # nothing from Habla yet: the ML backend fills it
    prediction: dict[str, Any] = {
        "model_version": segment.transcript_source,
        "result": transcription_result(segment.transcript),
    }
    score = prefill_score(segment.habla_confidence, human_corrected=segment.transcript_source == "habla-corrected")
    if score is not None:
        prediction["score"] = round(score, 4)
    return prediction


def segment_record(segment: Segment, clip: ArchivedClip, stat: Stat | None = None) -> SegmentRecord:
    return SegmentRecord(
        key=segment.key,
        session=segment.session,
        filename=segment.filename,
        sha256=clip.sha256,
        duration=round(clip.duration, 3),
        speaker=segment.speaker,
        transcript_source=segment.transcript_source,
        source_path=str(segment.path.resolve()),
        source_size=stat[0] if stat else None,
        source_mtime_ns=stat[1] if stat else None,
    )
