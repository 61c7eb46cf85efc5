"""Export a model version for Habla: LoRA merged, CTranslate2 int8 and float16, checked by transcription.

The conversion is :mod:`training.ct2_convert`, the check :mod:`training.export_check`. Everything is
built and checked in a hidden dir and moved into place only when the check passes, so a refused export
is not kept and earlier exports of the version stay untouched.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml_backend.registry import HF_SUBDIR, weights_dir
from training.ct2_convert import QUANTIZATIONS, ExportError, convert_to_ct2, full_weights_dir, move_into_place
from training.deliver import ct2_subdir
from training.export_check import (
    DEFAULT_TOLERANCE,
    INT8_TOLERANCE,
    SERVED_BEAM_SIZE,
    ExportCheck,
    check_export,
    check_set,
)

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What an export wrote (quantization -> its CTranslate2 dir) and, when it was checked, the check."""

    outputs: dict[str, Path]
    check: ExportCheck | None = None


def export_model(
    model_dir: Path,
    out_dir: Path,
    *,
    quantizations: Sequence[str] = QUANTIZATIONS,
    base_dir: Path | None = None,
    check_clips: Sequence[Any] = (),
    check_references: Sequence[str] = (),
    tolerance: float = DEFAULT_TOLERANCE,
    int8_tolerance: float = INT8_TOLERANCE,
    max_new_tokens: int | None = None,
) -> ExportResult:
    """Merge (if LoRA), convert to each quantization under ``out_dir`` and check on the given clips.

    Everything is built and checked in a hidden dir inside ``out_dir`` and moved into place only when
    the check passes: a failed check (or a crash) leaves earlier exports of the version untouched.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    building = out_dir / f".export-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    try:
        staged: dict[str, Path] = {}
        with full_weights_dir(model_dir, base_dir) as full:
            for quantization in quantizations:
                log.info("converting %s to CTranslate2 %s", model_dir, quantization)
                staged[quantization] = convert_to_ct2(full, building / ct2_subdir(quantization), quantization)
            check = None
            if check_clips:
                check = check_export(
                    full, staged, check_clips, check_references, tolerance=tolerance, int8_tolerance=int8_tolerance,
                    max_new_tokens=max_new_tokens,
                )
                failures = check.failures()
                if failures:
                    gaps = "; ".join(
                        f"{check.summary(q)}: off by {gap:.4f}, allowed {check.allowed(q):.2f}" for q, gap in failures.items()
                    )
                    raise ExportError(
                        f"{model_dir}: CTranslate2 WER {gaps}, on {check.clips} clips; export discarded "
                        "(earlier exports kept)"
                    )
        outputs = {q: move_into_place(path, out_dir / path.name) for q, path in staged.items()}
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return ExportResult(outputs, check)


def export_version(
    home: Path,
    version: str,
    *,
    quantizations: Sequence[str] = QUANTIZATIONS,
    out_dir: Path | None = None,
    check: bool = True,
    check_limit: int = 40,
    tolerance: float = DEFAULT_TOLERANCE,
    int8_tolerance: float = INT8_TOLERANCE,
) -> ExportResult:
    """Export a registered version into its own dir (``ct2/``, ``ct2-float16/``) or into ``out_dir``."""
    home = Path(home)
    models_dir = home / "models"
    vdir = weights_dir(models_dir, version)
    hf = vdir / HF_SUBDIR
    if not ((hf / "config.json").is_file() or (hf / "adapter_config.json").is_file()):
        raise ExportError(f"{version}: no transformers weights in {hf} to export")
    clips, refs, source = check_set(home, check_limit) if check else ([], [], "")
    result = export_model(
        hf, out_dir or vdir, quantizations=quantizations, check_clips=clips, check_references=refs, tolerance=tolerance,
        int8_tolerance=int8_tolerance,
    )
    if result.check and out_dir is None:
        from training.registry import update_card

        update_card(
            models_dir,
            version,
            export_check={
                "clips": result.check.clips,
                "source": source,
                "wer_transformers": result.check.wer_transformers,
                "wer_ct2": result.check.wer_ct2,
                "clips_differing": result.check.differing,
                "decoding": "same log-mel features, greedy, <|es|><|transcribe|><|notimestamps|>",
                "wer_served_float": result.check.wer_served_float,
                "wer_served_int8": result.check.wer_served,
                "served_gap_interval": {
                    q: [round(i.low, 4), round(i.high, 4)]
                    for q in result.check.wer_served if (i := result.check.served_interval(q)) is not None
                },
                "served_decoding": f"faster-whisper as the backend serves it, beam {SERVED_BEAM_SIZE}, temperature 0",
            },
        )
    return result
