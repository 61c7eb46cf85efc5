"""A trained model written into a version's staging dir: merged weights, the LoRA adapter alone, the CTranslate2 export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml_backend.registry import CT2_SUBDIR, HF_SUBDIR
from training.options import TrainOptions

LORA_SUBDIR = "lora"


def save_version(
    model: Any,
    processor: Any,
    staging: Path,
    options: TrainOptions,
) -> None:
    """Write ``hf/`` (full weights, LoRA merged), ``lora/`` (the adapter alone) and ``ct2/`` into staging."""
    from training.ct2_convert import convert_to_ct2, write_processor_files

    hf_dir = staging / HF_SUBDIR
    if options.method == "lora":
        model.save_pretrained(str(staging / LORA_SUBDIR))
        processor.save_pretrained(str(staging / LORA_SUBDIR))
        model = model.merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(str(hf_dir))
    write_processor_files(processor, hf_dir)
    if options.export_ct2:
        convert_to_ct2(hf_dir, staging / CT2_SUBDIR, quantization=options.ct2_quantization)
