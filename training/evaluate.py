"""WER/CER of model versions on the fixed test split and the standard-Spanish regression set.

Decoding goes through ``ml_backend.loading.load_engine`` with the backend's own defaults (faster-whisper,
beam 5, the same thresholds), each clip decoded on its own: that is how Habla transcribes a segment (one
ASR input per whisperx call), and no clip's words then depend on which other clips share its window. The backend
packs short clips into shared 30-s windows when it prelabels, which is faster but lets a clip's window-mates
change its words (whisper-base's accent WER on one set: 0.235 alone, 0.177–0.194 packed, depending on
which clips shared a window), so a comparison of two versions scored packed would carry that noise.
A version that has only transformers weights is exported to CTranslate2 first.

Each evaluated version gets ``reports/<version>.json`` (every figure and every utterance, with its
normalised-level error counts and slice keys), a Markdown summary with bootstrap intervals per slice,
and a PNG chart; comparing versions adds ``reports/compare-<a>-vs-<b>.{md,png}`` with the promotion
gate's slice table. Registered versions get their summary figures, the ids of the sets they were
measured on and the path of their JSON report (``eval_report``) written into their model card: the
promotion gate loads both versions' per-utterance records from there.

Which of two versions is the reference of a comparison: the served one (CURRENT) if it is one of them,
else the first named.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ml_backend.audio import AudioError, decode, rms_dbfs
from ml_backend.registry import (
    CT2_SUBDIR,
    HF_SUBDIR,
    RegistryError,
    is_ct2_dir,
    read_current,
    weights_dir,
)
from training.eval_report import report_paths, write_comparison, write_reports
from training.evaluation import ModelEvaluation, card_fields
from training.manifest import DatasetError, default_manifest, read_manifest, split_id, split_rows
from training.metrics import DEFAULT_QUIET_DBFS, Utterance, score_corpus
from training.paired_sets import DECODED_ALONE, DECODED_PACKED, REGRESSION_SET, TEST_SET

log = logging.getLogger(__name__)

BATCH = 16  # clips per engine call: enough to fill packed windows, small enough for a smooth progress bar


class EvaluateError(RuntimeError):
    """Nothing to evaluate on, or the model cannot be used; the message says what to do."""


@dataclass
class EvalSet:
    name: str
    rows: list[dict[str, Any]]
    set_id: str
    source: str


# ---------------------------------------------------------------------------------------------- sets


def test_set(home: Path, manifest: Path | None = None) -> EvalSet:
    """The persisted test split of the pull manifest (or the rows of ``manifest`` if it is not the pull one)."""
    datasets_dir = Path(home) / "datasets"
    pull_manifest = default_manifest(datasets_dir)
    if manifest is not None and Path(manifest).resolve() != pull_manifest.resolve():
        rows, problems = read_manifest(Path(manifest))
        for line in problems:
            log.warning("%s", line)
        return EvalSet(TEST_SET, rows, split_id(rows), str(manifest))
    try:
        rows = split_rows(pull_manifest, datasets_dir)[0]["test"]
    except DatasetError as exc:
        raise EvaluateError(str(exc)) from exc
    if not rows:
        raise EvaluateError(f"{pull_manifest}: no test sessions yet (a split needs at least two sessions)")
    return EvalSet(TEST_SET, rows, split_id(rows), f"test split of {pull_manifest}")


def regression_set(home: Path, manifest: Path | None = None) -> EvalSet:
    from training.regression_set import RegressionSetError, ensure_regression_set

    try:
        path = ensure_regression_set(Path(home) / "datasets", manifest)
    except RegressionSetError as exc:
        raise EvaluateError(str(exc)) from exc
    rows, problems = read_manifest(path)
    for line in problems:
        log.warning("%s", line)
    return EvalSet(REGRESSION_SET, rows, split_id(rows), str(path))


# ---------------------------------------------------------------------------------------------- models


def servable_model(home: Path, model: str) -> tuple[str, Path, bool]:
    """(label, dir to load, is a registered version) for a version name or a model dir.

    A registered version without ``ct2/`` is exported first, so it is scored by the serving runtime.
    """
    models_dir = Path(home) / "models"
    path = Path(model)
    if path.is_dir() and not (models_dir / model).is_dir():
        return path.name, path, False
    try:
        vdir = weights_dir(models_dir, model)
    except RegistryError as exc:
        raise EvaluateError(str(exc)) from exc
    if not is_ct2_dir(vdir / CT2_SUBDIR):
        if not (vdir / HF_SUBDIR).is_dir():
            raise EvaluateError(f"{model}: neither ct2/ nor hf/ weights in {vdir}")
        from training.export import export_version

        log.warning("%s has no CTranslate2 export: exporting it first (int8, as served)", model)
        export_version(Path(home), model, quantizations=("int8",), check=False)
    return model, vdir, True


def _load_clips(rows: Sequence[dict[str, Any]]) -> tuple[list[Any], list[dict[str, Any]], list[str]]:
    clips, kept, skipped = [], [], []
    for row in rows:
        try:
            clips.append(decode(row["audio_path"]))
            kept.append(row)
        except AudioError as exc:
            skipped.append(f"{row.get('segment_key') or row['audio_path']}: {exc}; not scored")
    return clips, kept, skipped


def evaluate_model(
    model: Path,
    sets: Sequence[EvalSet],
    *,
    label: str | None = None,
    beam_size: int = 5,
    device: str = "auto",
    quiet_threshold_dbfs: float = DEFAULT_QUIET_DBFS,
    progress: bool = True,
    decode_options: Any = None,
) -> ModelEvaluation:
    """Transcribe every set with the serving engine and score it.

    ``decode_options`` (an ``ml_backend.decoding.DecodeOptions``) overrides the decoding; leave it ``None``
    for the backend's decoding (its environment's temperatures and token cap) with each clip alone.
    """
    from dataclasses import replace

    from ml_backend.ct2_engine import FasterWhisperEngine
    from ml_backend.decoding import decode_options_from_env
    from ml_backend.engine import EngineError
    from ml_backend.loading import load_engine

    options = decode_options if decode_options is not None else replace(decode_options_from_env(), pack=False)
    try:
        engine = load_engine(model, device=device)  # the process's engine of this model, shared with serving
    except EngineError as exc:
        raise EvaluateError(str(exc)) from exc
    decoding = DECODED_PACKED if options.pack and isinstance(engine, FasterWhisperEngine) else DECODED_ALONE
    result = ModelEvaluation(label or engine.version, engine.model_path, type(engine).__name__, beam_size, decoding)
    for eval_set in sets:
        clips, rows, skipped = _load_clips(eval_set.rows)
        result.skipped.extend(skipped)
        for line in skipped:
            log.warning("%s", line)
        if not rows:
            continue
        hypotheses: list[str] = []
        started = time.perf_counter()
        with tqdm(total=len(clips), desc=f"{result.version} on {eval_set.name}", unit="clip", disable=not progress) as bar:
            for start in range(0, len(clips), BATCH):
                batch = clips[start : start + BATCH]
                hypotheses.extend(t.text for t in engine.transcribe(batch, beam_size=beam_size, options=options))
                bar.update(len(batch))
        result.elapsed_seconds += time.perf_counter() - started
        result.audio_seconds += sum(len(c) for c in clips) / 16_000
        utterances = [
            Utterance(
                key=row.get("segment_key") or row["audio_path"],
                reference=row["transcript"],
                hypothesis=hypothesis,
                session=str(row.get("session") or ""),
                speaker=str(row.get("speaker") or ""),
                loudness_dbfs=rms_dbfs(clip),
            )
            for row, hypothesis, clip in zip(rows, hypotheses, clips, strict=True)
        ]
        result.reports[eval_set.name] = score_corpus(utterances, quiet_threshold_dbfs=quiet_threshold_dbfs)
        result.set_ids[eval_set.name] = eval_set.set_id
    return result


def _served_report(home: Path, version: str) -> dict[str, Any] | None:
    """The served version's last report, to compare ``version`` against (None if it is the served one)."""
    current = read_current(Path(home) / "models")
    if current is None or current == version:
        return None
    path = report_paths(current, Path(home) / "reports")["json"]
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- entry point


def evaluate(
    home: str | os.PathLike[str],
    models: Sequence[str] = (),
    *,
    manifest: Path | None = None,
    regression_manifest: Path | None = None,
    include_test: bool = True,
    include_regression: bool = True,
    beam_size: int = 5,
    device: str = "auto",
    update_cards: bool = True,
    progress: bool = True,
    decode_options: Any = None,
) -> list[ModelEvaluation]:
    """Evaluate versions (default: CURRENT) or model dirs on the same sets; write reports and cards."""
    from training.registry import update_card

    home = Path(home)
    models_dir = home / "models"
    models = list(models) or [read_current(models_dir) or ""]
    if not models[0]:
        raise EvaluateError(f"nothing to evaluate: no version given and no CURRENT in {models_dir}")
    sets = []
    if include_test:
        sets.append(test_set(home, manifest))
    if include_regression:
        sets.append(regression_set(home, regression_manifest))
    if not sets:
        raise EvaluateError("both the test split and the regression set are switched off")
    reports_dir = home / "reports"
    evaluations = []
    for model in models:
        label, path, registered = servable_model(home, model)
        evaluation = evaluate_model(
            path, sets, label=label, beam_size=beam_size, device=device, progress=progress, decode_options=decode_options
        )
        evaluation.registered = registered
        paths = write_reports(evaluation, reports_dir, against=_served_report(home, evaluation.version))
        if registered and update_cards:
            update_card(models_dir, label, **card_fields(evaluation, paths["json"]))
        evaluations.append(evaluation)
    if len(evaluations) == 2:
        current = read_current(models_dir)
        reference = 1 if evaluations[1].version == current and evaluations[0].version != current else 0
        base, candidate = evaluations[reference], evaluations[1 - reference]
        # The candidate's own report was written against the served version's previous report: redo it
        # against the figures just measured on the same clips.
        write_reports(candidate, reports_dir, against=base.to_dict())
        if update_cards and base.registered and candidate.registered and base.test_wer is not None:
            update_card(models_dir, candidate.version, baseline_wer=base.test_wer, baseline_version=base.version)
        write_comparison(evaluations, reports_dir, reference)
    elif len(evaluations) > 2:
        write_comparison(evaluations, reports_dir)
    return evaluations
