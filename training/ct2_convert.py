"""A model version's transformers weights to CTranslate2: LoRA merged, converted, put in place atomically.

Habla loads Whisper with faster-whisper/WhisperX, for which a CTranslate2 dir is a drop-in
(``WHISPER_MODEL=<dir>``). The conversion is CTranslate2's own ``TransformersConverter`` run on a local
dir (offline), with ``tokenizer.json`` and ``preprocessor_config.json`` copied in because faster-whisper
reads them from the model dir. Every conversion is written beside its final place and renamed when
complete, so an interrupted export never leaves a half-written model in a version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ml_backend.lora import merge_adapter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

QUANTIZATIONS = ("int8", "float16")
SIDE_FILES = ("tokenizer.json", "preprocessor_config.json")


class ExportError(RuntimeError):
    """The export failed or did not pass its check; ``str()`` says which model and why."""


def write_processor_files(processor: Any, hf_dir: Path) -> None:
    """Processor files in both layouts: transformers 5 folds the feature extractor into
    ``processor_config.json``, CTranslate2 and faster-whisper read ``preprocessor_config.json``."""
    hf_dir = Path(hf_dir)
    processor.save_pretrained(str(hf_dir))
    processor.feature_extractor.to_json_file(str(hf_dir / "preprocessor_config.json"))


def merge_lora(adapter_dir: Path, base_dir: Path | None = None) -> Any:
    """The adapter's LoRA deltas added into its base weights: a plain ``WhisperForConditionalGeneration``."""
    from transformers import WhisperForConditionalGeneration

    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise ExportError(f"{adapter_dir}: not a LoRA adapter dir (no adapter_config.json)")
    if base_dir is None:
        ref = json.loads(config_path.read_text()).get("base_model_name_or_path")
        if not ref or not Path(ref).is_dir():
            raise ExportError(f"{config_path}: base model {ref!r} not found; pass the base dir")
        base_dir = Path(ref)
    base = WhisperForConditionalGeneration.from_pretrained(str(base_dir))
    return merge_adapter(base, adapter_dir)


@contextlib.contextmanager
def full_weights_dir(model_dir: Path, base_dir: Path | None = None) -> Iterator[Path]:
    """A transformers dir with full weights: ``model_dir`` itself, or a temp dir with the LoRA merged."""
    model_dir = Path(model_dir)
    if (model_dir / "config.json").is_file():
        yield model_dir
        return
    from transformers import WhisperProcessor

    merged = merge_lora(model_dir, base_dir)
    source_of_files = model_dir if (model_dir / "tokenizer.json").is_file() else Path(base_dir or merged.name_or_path)
    with tempfile.TemporaryDirectory(prefix="habla-merge-") as tmp:
        merged.save_pretrained(tmp)
        write_processor_files(WhisperProcessor.from_pretrained(str(source_of_files)), Path(tmp))
        yield Path(tmp)


def convert_to_ct2(hf_dir: Path, destination: Path, quantization: str = "int8") -> Path:
    """CTranslate2 conversion of a full-weights transformers dir, written atomically to ``destination``."""
    from ctranslate2.converters import TransformersConverter

    hf_dir, destination = Path(hf_dir), Path(destination)
    missing = [name for name in SIDE_FILES if not (hf_dir / name).is_file()]
    if missing:
        raise ExportError(f"{hf_dir}: missing {', '.join(missing)} (faster-whisper needs them beside the model)")
    building = destination.with_name(f".{destination.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        converter = TransformersConverter(str(hf_dir), copy_files=list(SIDE_FILES), load_as_float16=quantization == "float16")
        converter.convert(str(building), quantization=quantization, force=True)
        move_into_place(building, destination)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return destination


def move_into_place(source: Path, destination: Path) -> Path:
    """Replace ``destination`` by ``source`` with renames only (same filesystem)."""
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        os.replace(destination, old)
        os.replace(source, destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, destination)
    return destination
