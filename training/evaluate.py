"""WER/CER of model versions on the fixed test split and the standard-Spanish regression set.

Decoding goes through ``ml_backend.engine.load_engine`` with the backend's own defaults (faster-whisper,
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

import datetime as dt
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ml_backend.audio import AudioError, decode
from ml_backend.registry import CT2_SUBDIR, HF_SUBDIR, RegistryError, is_ct2_dir, read_current, version_dir
from training.dataset import DatasetError, default_manifest, read_manifest, split_id, split_rows
from training.gate import (
    DECODED_ALONE,
    DECODED_PACKED,
    ESPEAK_ONLY_NOTE,
    REGRESSION_SET,
    TEST_SET,
    GateDecision,
    judge,
    report_notes,
    slice_table,
    version_slice_table,
)
from training.metrics import DEFAULT_QUIET_DBFS, CorpusReport, Utterance, rms_dbfs, score_corpus

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


@dataclass
class ModelEvaluation:
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
        vdir = version_dir(models_dir, model)
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

    ``decode_options`` (an ``ml_backend.engine.DecodeOptions``) overrides the decoding; leave it ``None``
    for the backend's decoding (its environment's temperatures and token cap) with each clip alone.
    """
    from dataclasses import replace

    from ml_backend.engine import EngineError, FasterWhisperEngine, decode_options_from_env, load_engine

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


# ---------------------------------------------------------------------------------------------- reports


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _head(report: dict[str, Any]) -> list[str]:
    """The Kokoro-absent warning, when due, as the report's first line."""
    notes = report_notes(report)
    return [*notes, ""] if notes else []


def _gate_section(decision: GateDecision, title: str) -> list[str]:
    lines = ["", f"## {title}", ""]
    if not decision.conditions:
        return lines + [f"- not comparable: {r}" for r in decision.reasons]
    lines.append(f"The promotion gate (default options) {'passes' if decision.passed else 'refuses'} {decision.candidate}.")
    lines += ["", *slice_table(decision.conditions, decision.current or "current", decision.candidate), ""]
    lines += [f"- {r}" for r in decision.reasons]
    lines += [f"- {n}" for n in decision.notes if n != ESPEAK_ONLY_NOTE]
    return lines


def markdown(evaluation: ModelEvaluation, against: dict[str, Any] | None = None) -> str:
    """The per-version report; ``against`` (the reference version's report dict) adds the gate's slice table."""
    data = evaluation.to_dict()
    lines = _head(data)
    lines += [f"# {evaluation.version}", "", f"Model `{evaluation.model_path}` ({evaluation.backend}, beam {evaluation.beam_size}, "
              f"{'each clip decoded alone' if evaluation.decoding == DECODED_ALONE else 'clips packed into shared 30-s windows'}).", ""]
    lines += ["| set | clips | WER raw | WER normalised | WER accent-insensitive | CER normalised |", "|---|---:|---:|---:|---:|---:|"]
    for name, report in evaluation.reports.items():
        lv = report.levels
        lines.append(
            f"| {name} | {report.utterances} | {_pct(lv['raw'].wer)} | {_pct(lv['normalised'].wer)} | "
            f"{_pct(lv['accent_insensitive'].wer)} | {_pct(lv['normalised'].cer)} |"
        )
    intervals = version_slice_table(data)
    if intervals:
        lines += ["", "## WER by slice, with bootstrap intervals", "", *intervals]
    if against is not None:
        decision = judge(data, against, candidate=evaluation.version, current=str(against.get("version")))
        lines += _gate_section(decision, f"Against {decision.current}: paired differences")
    for name, report in evaluation.reports.items():
        groups_by = (("session", report.by_session), ("speaker", report.by_speaker), ("family", report.by_family), ("loudness", report.by_loudness))
        for title, groups in groups_by:
            if len(groups) < 2 and title != "loudness":
                continue
            lines += ["", f"## {name}: by {title}", "", f"| {title} | clips | WER | CER |", "|---|---:|---:|---:|"]
            lines += [f"| {g.name} | {g.utterances} | {_pct(g.wer)} | {_pct(g.cer)} |" for g in groups.values()]
        if report.worst:
            lines += ["", f"## {name}: worst utterances", "", "| segment | WER | reference | hypothesis |", "|---|---:|---|---|"]
            for u in report.worst:
                ref, hyp = (s.replace("|", "\\|") for s in (u.reference, u.hypothesis))
                lines.append(f"| {u.key} | {_pct(u.wer)} | {ref} | {hyp} |")
    if evaluation.skipped:
        lines += ["", "## not scored", ""] + [f"- {line}" for line in evaluation.skipped]
    return "\n".join(lines) + "\n"


def comparison_markdown(evaluations: Sequence[ModelEvaluation], reference: int = 0) -> str:
    """Versions side by side; for two, the paired gate comparison of the other one against ``reference``."""
    names = sorted({n for e in evaluations for n in e.reports})
    head: list[str] = []
    for e in evaluations:
        head = head or _head(e.to_dict())
    lines = [*head, "# " + " vs ".join(e.version for e in evaluations), ""]
    lines += ["| version | " + " | ".join(f"{n} WER" for n in names) + " |", "|---|" + "---:|" * len(names)]
    for e in evaluations:
        lines.append(f"| {e.version} | " + " | ".join(_pct(e.reports[n].wer) if n in e.reports else "-" for n in names) + " |")
    if len(evaluations) == 2 and all(n in e.reports for e in evaluations for n in names):
        a, b = evaluations[reference], evaluations[1 - reference]
        lines.append("")
        for n in names:
            before, after = a.reports[n].wer, b.reports[n].wer
            change = (after - before) / before if before else 0.0
            lines.append(f"- {n}: {_pct(before)} → {_pct(after)} ({change:+.1%} relative)")
        same = all(a.set_ids.get(n) == b.set_ids.get(n) for n in names)
        lines.append(f"- same audio for both: {'yes' if same else 'NO — figures do not compare'}")
        decision = judge(b.to_dict(), a.to_dict(), candidate=b.version, current=a.version)
        lines += _gate_section(decision, f"Promotion gate: {b.version} against {a.version}")
    return "\n".join(lines) + "\n"


def chart(evaluations: Sequence[ModelEvaluation], path: Path) -> Path:
    """Grouped bars: WER per set and level for each version, and normalised WER by test session."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        (f"{name}\n{level.replace('_', '-')}", name, level)
        for name in (TEST_SET, REGRESSION_SET)
        for level in ("raw", "normalised", "accent_insensitive")
        if any(name in e.reports for e in evaluations)
    ]
    sessions = sorted({s for e in evaluations if TEST_SET in e.reports for s in e.reports[TEST_SET].by_session})
    fig, axes = plt.subplots(1, 2 if sessions else 1, figsize=(12 if sessions else 7, 4.5), squeeze=False)
    width = 0.8 / max(len(evaluations), 1)
    for k, e in enumerate(evaluations):
        values = [100 * e.reports[n].levels[lv].wer if n in e.reports else 0.0 for _, n, lv in bars]
        axes[0][0].bar([i + k * width for i in range(len(bars))], values, width, label=e.version)
        if sessions:
            by = e.reports[TEST_SET].by_session if TEST_SET in e.reports else {}
            axes[0][1].bar(
                [i + k * width for i in range(len(sessions))], [100 * by[s].wer if s in by else 0.0 for s in sessions], width, label=e.version
            )
    axes[0][0].set_xticks([i + width * (len(evaluations) - 1) / 2 for i in range(len(bars))], [b[0] for b in bars], fontsize=8)
    axes[0][0].set_ylabel("WER (%)")
    axes[0][0].set_title("WER by set and normalisation")
    axes[0][0].legend()
    if sessions:
        axes[0][1].set_xticks([i + width * (len(evaluations) - 1) / 2 for i in range(len(sessions))], sessions, rotation=30, ha="right", fontsize=7)
        axes[0][1].set_title("test WER (normalised) by session")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def report_paths(version: str, reports_dir: Path) -> dict[str, Path]:
    stem = _safe(version)
    return {suffix: Path(reports_dir) / f"{stem}.{suffix}" for suffix in ("json", "md", "png")}


def write_reports(evaluation: ModelEvaluation, reports_dir: Path, against: dict[str, Any] | None = None) -> dict[str, Path]:
    """JSON (every utterance), Markdown and PNG of one version; ``against`` adds the gate comparison."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    paths = report_paths(evaluation.version, reports_dir)
    _write_text(paths["json"], json.dumps(evaluation.to_dict(), indent=2, ensure_ascii=False) + "\n")
    _write_text(paths["md"], markdown(evaluation, against))
    chart([evaluation], paths["png"])
    return paths


def write_comparison(evaluations: Sequence[ModelEvaluation], reports_dir: Path, reference: int = 0) -> dict[str, Path]:
    stem = "compare-" + "-vs-".join(_safe(e.version) for e in evaluations)
    paths = {"md": Path(reports_dir) / f"{stem}.md", "png": Path(reports_dir) / f"{stem}.png"}
    _write_text(paths["md"], comparison_markdown(evaluations, reference))
    chart(evaluations, paths["png"])
    return paths


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


def ensure_evaluated(settings: Any, versions: Sequence[str], *, regression_manifest: Path | None = None) -> list[ModelEvaluation]:
    """Evaluate ``versions`` together (the promotion gate needs figures from the same clips).

    The regression set is ``regression_manifest``, else the ``regression_manifest`` setting, else the
    generated default.
    """
    regression_manifest = regression_manifest or getattr(settings, "regression_manifest", None)
    return evaluate(settings.home, list(versions), regression_manifest=regression_manifest)
