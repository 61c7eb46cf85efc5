"""Export a model version for Habla: LoRA merged, CTranslate2 int8 and float16, checked by transcription.

Habla loads Whisper with faster-whisper/WhisperX, for which a CTranslate2 dir is a drop-in
(``WHISPER_MODEL=<dir>``). The conversion is CTranslate2's own ``TransformersConverter`` run on a local
dir (offline), with ``tokenizer.json`` and ``preprocessor_config.json`` copied in because faster-whisper
reads them from the model dir. Every export is written beside its final place and renamed when
complete, so an interrupted export never leaves a half-written model in a version.

The check: the exported model transcribes the test split with faster-whisper (the serving engine) and
the transformers model transcribes the same clips with the same decoding; the WERs must agree within
1 point (absolute), else the export is reported as failed and not kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from ml_backend.registry import CT2_SUBDIR, HF_SUBDIR, RegistryError, version_dir  # noqa: E402

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "float16")
SIDE_FILES = ("tokenizer.json", "preprocessor_config.json")
DEFAULT_TOLERANCE = 0.01  # 1 WER point


class ExportError(RuntimeError):
    """The export failed or did not pass its check; ``str()`` says which model and why."""


def ct2_subdir(quantization: str) -> str:
    """Where a quantization lives in a version: ``ct2/`` is the served (int8) one."""
    return CT2_SUBDIR if quantization == "int8" else f"{CT2_SUBDIR}-{quantization}"


def write_processor_files(processor: Any, hf_dir: Path) -> None:
    """Processor files in both layouts: transformers 5 folds the feature extractor into
    ``processor_config.json``, CTranslate2 and faster-whisper read ``preprocessor_config.json``."""
    hf_dir = Path(hf_dir)
    processor.save_pretrained(str(hf_dir))
    processor.feature_extractor.to_json_file(str(hf_dir / "preprocessor_config.json"))


def merge_lora(adapter_dir: Path, base_dir: Path | None = None) -> Any:
    """The adapter's LoRA deltas added into its base weights: a plain ``WhisperForConditionalGeneration``."""
    from peft import PeftModel
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
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


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
        _move_into_place(building, destination)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return destination


# ---------------------------------------------------------------------------------------------- check


@dataclass
class ExportCheck:
    clips: int
    wer_transformers: float
    wer_ct2: dict[str, float]  # quantization -> WER
    tolerance: float
    transcripts_transformers: list[str] = field(default_factory=list)
    transcripts_ct2: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(abs(w - self.wer_transformers) <= self.tolerance + 1e-9 for w in self.wer_ct2.values())


def check_export(
    hf_dir: Path,
    ct2_dirs: dict[str, Path],
    clips: Sequence[Any],
    references: Sequence[str],
    *,
    beam_size: int = 5,
    tolerance: float = DEFAULT_TOLERANCE,
    language: str = "es",
    max_new_tokens: int | None = None,
) -> ExportCheck:
    """Transcribe ``clips`` with the transformers model and each export (same engine API, same decoding)."""
    from ml_backend.engine import DecodeOptions, load_engine
    from training.metrics import corpus_wer

    # One clip per window and plain greedy/beam search without temperature fallback on both sides, so
    # that the only difference left is the runtime and its weight types.
    options = DecodeOptions(pack=False, temperatures=(0.0,), max_new_tokens=max_new_tokens)
    reference_engine = load_engine(hf_dir, device="cpu", compute_type="float32", language=language, options=options)
    hf_texts = [t.text for t in reference_engine.transcribe(list(clips), beam_size=beam_size)]
    result = ExportCheck(len(clips), corpus_wer(references, hf_texts), {}, tolerance, hf_texts)
    for quantization, ct2_dir in ct2_dirs.items():
        # float16 weights run on the CPU as float32: the check is about the conversion, not the device.
        compute = "int8" if quantization == "int8" else "float32"
        engine = load_engine(ct2_dir, device="cpu", compute_type=compute, language=language, options=options)
        texts = [t.text for t in engine.transcribe(list(clips), beam_size=beam_size)]
        result.wer_ct2[quantization] = corpus_wer(references, texts)
        result.transcripts_ct2[quantization] = texts
    return result


# ---------------------------------------------------------------------------------------------- export


@dataclass
class ExportResult:
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
    beam_size: int = 5,
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
                    full, staged, check_clips, check_references, tolerance=tolerance, beam_size=beam_size,
                    max_new_tokens=max_new_tokens,
                )
                if not check.passed:
                    ct2 = ", ".join(f"{q} {w:.4f}" for q, w in check.wer_ct2.items())
                    raise ExportError(
                        f"{model_dir}: CTranslate2 WER ({ct2}) differs from the transformers model's "
                        f"{check.wer_transformers:.4f} by more than {tolerance:.2f} on {check.clips} clips; "
                        "export discarded (earlier exports kept)"
                    )
        outputs = {q: _move_into_place(path, out_dir / path.name) for q, path in staged.items()}
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return ExportResult(outputs, check)


def _move_into_place(source: Path, destination: Path) -> Path:
    """Replace ``destination`` by ``source`` with renames only (same filesystem)."""
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
        os.replace(destination, old)
        os.replace(source, destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, destination)
    return destination


def check_set(home: Path, limit: int) -> tuple[list[Any], list[str], str]:
    """Clips for the check: the fixed test split if there is one, else the regression set."""
    from ml_backend.audio import AudioError, decode
    from training.dataset import DatasetError, default_manifest, split_rows
    from training.regression_set import ensure_regression_set

    rows: list[dict[str, Any]] = []
    source = "test split"
    manifest = default_manifest(home / "datasets")
    if manifest.is_file():
        with contextlib.suppress(DatasetError):
            rows = split_rows(manifest, home / "datasets")[0]["test"]
    if not rows:
        from training.dataset import read_manifest

        rows = read_manifest(ensure_regression_set(home / "datasets"))[0]
        source = "regression set"
    clips, refs = [], []
    for row in rows[:limit]:
        try:
            clips.append(decode(row["audio_path"]))
            refs.append(row["transcript"])
        except AudioError as exc:
            log.warning("%s: %s; left out of the export check", row["audio_path"], exc)
    return clips, refs, source


def export_version(
    home: Path,
    version: str,
    *,
    quantizations: Sequence[str] = QUANTIZATIONS,
    out_dir: Path | None = None,
    check: bool = True,
    check_limit: int = 40,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportResult:
    """Export a registered version into its own dir (``ct2/``, ``ct2-float16/``) or into ``out_dir``."""
    home = Path(home)
    models_dir = home / "models"
    vdir = version_dir(models_dir, version)
    hf = vdir / HF_SUBDIR
    if not ((hf / "config.json").is_file() or (hf / "adapter_config.json").is_file()):
        raise ExportError(f"{version}: no transformers weights in {hf} to export")
    clips, refs, source = check_set(home, check_limit) if check else ([], [], "")
    result = export_model(
        hf, out_dir or vdir, quantizations=quantizations, check_clips=clips, check_references=refs, tolerance=tolerance
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
            },
        )
    return result


@click.command("export")
@click.argument("version", required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the exports here instead of into the version dir.")
@click.option("--quantization", "quantizations", multiple=True, type=click.Choice(["int8", "float16", "int8_float16", "float32"]),
              help="CTranslate2 weight types (repeatable). Default: int8 and float16.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Transcribe the test split with both runtimes; refuse the export if WERs differ by > --tolerance.")
@click.option("--check-clips", type=int, default=40, show_default=True, help="How many test clips the check uses.")
@click.option("--tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True, help="Allowed absolute WER difference.")
@click.pass_obj
def export_command(settings: Any, version: str | None, out_dir: Path | None, quantizations: tuple[str, ...],
                   check: bool, check_clips: int, tolerance: float) -> None:
    """Merge LoRA and export VERSION (default: the served one) to CTranslate2 for Habla.

    \b
    Habla loads the result directly:
      WHISPER_MODEL=<home>/models/<version>/ct2 ./habla      (int8, CPU)
      WHISPER_MODEL=<home>/models/<version>/ct2-float16 ...   (GPU)
    """
    from ml_backend.registry import read_current

    version = version or read_current(settings.models_dir)
    if version is None:
        raise click.ClickException(f"no version given and nothing served in {settings.models_dir}")
    try:
        result = export_version(settings.home, version, quantizations=quantizations or QUANTIZATIONS,
                                out_dir=out_dir, check=check, check_limit=check_clips, tolerance=tolerance)
    except (ExportError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from exc
    for quantization, path in result.outputs.items():
        click.echo(f"{quantization:>8}: {path}")
    if result.check:
        ct2 = ", ".join(f"{q} {w:.4f}" for q, w in result.check.wer_ct2.items())
        click.echo(f"check on {result.check.clips} clips: WER transformers {result.check.wer_transformers:.4f}, CTranslate2 {ct2}")
    click.echo(f"Habla: WHISPER_MODEL={result.outputs.get('int8') or next(iter(result.outputs.values()))}")
