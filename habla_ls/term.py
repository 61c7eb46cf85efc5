"""A term of rounds, simulated through the product's own path: what a teacher does week after week.

Each round: push the Habla sessions (idempotent), ``round`` ranks the unlabelled tasks with a strategy,
a **scripted annotator** (clearly a simulation: it types the known reference of each task through Label
Studio's API, as the demo's does) corrects the top tasks until the term's schedule of corrections is
reached, and the finish (pull, train, evaluate, gate, export, promote, deliver, prefill) runs as
``watch`` starts it. One JSON line per finished round goes to ``<home>/reports/term.jsonl``: what was
ranked and corrected, the finish's outcome, and the gate's decision with its figures.

Resumable at any point: a round already in the log is skipped; a round cut short corrects only what
its target still lacks (the count comes from Label Studio) and records those it made before the kill as
its own (``reports/term-round.json`` keeps what was corrected before it began), an interrupted finish
resumes from its journal, and a round whose finish had answered before the kill records that answer again.
``bench/term`` runs this on whisper-base; ``tests/test_term.py`` on the tiny Whisper.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from habla_ls.config import Settings
from habla_ls.finish_result import PROMOTED, REFUSED, UP_TO_DATE

log = logging.getLogger(__name__)

TERM_LOG = "term.jsonl"
ROUND_MARKER = "term-round.json"  # the round under way and what was corrected before it
SIMULATED_ANNOTATOR_NOTE = "SIMULATION: a scripted annotator types the known references in place of a human"


@dataclass(frozen=True)
class TermOptions:
    schedule: tuple[int, ...] = (20, 40, 80, 160)  # corrections in all after each round
    strategy: str | None = None  # None: the settings' round_strategy, as `round` without --strategy
    seed: int = 0  # the random strategy's shuffle (round r uses seed + r)
    train_config: Path | None = None  # the finish's training options (as `habla-ls finish --train-config`)
    force_promotion: bool = False  # serve every candidate (tests on a model that cannot pass the gate)
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.schedule or any(b <= a for a, b in zip(self.schedule, self.schedule[1:], strict=False)):
            raise ValueError(f"schedule must be increasing counts of corrections, not {list(self.schedule)}")


@dataclass
class RoundRecord:
    round: int
    strategy: str
    target: int  # corrections in all after this round
    corrected_before: int
    corrected_now: list[str]  # segment keys the annotator corrected in this round, in ranking order
    ranked: int  # unlabelled tasks the round ranked
    ranked_labelled: list[int]  # task ids the round ranked although a human had corrected them (must be empty)
    served_before: str | None
    served_after: str | None
    candidate: str | None
    outcome: str  # the finish's: promoted, refused, up-to-date, failed, ...
    detail: str
    gate: dict[str, Any] | None  # the gate's decision (passed, WERs, failed conditions, report path)
    round_seconds: float
    annotate_seconds: float
    finish_seconds: float
    steps: list[dict[str, Any]] = field(default_factory=list)  # the finish's steps with their durations
    extra: dict[str, Any] = field(default_factory=dict)  # what the caller adds (bench/term: held-out WER)

    @property
    def corrections(self) -> int:
        return self.corrected_before + len(self.corrected_now)


def read_log(home: Path) -> list[dict[str, Any]]:
    path = Path(home) / "reports" / TERM_LOG
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a kill: that round runs again
    return records


def _append_log(home: Path, record: dict[str, Any]) -> None:
    path = Path(home) / "reports" / TERM_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")


class ScriptedAnnotator:
    """Corrects tasks through Label Studio's API with known references (keyed by ``data.ext_id``)."""

    def __init__(self, client: Any, references: Mapping[str, str]):
        self.client = client
        self.references = references

    def correct(self, tasks: Sequence[tuple[int, str]]) -> list[str]:
        """(task id, segment key) pairs -> the keys corrected (those without a reference are skipped)."""
        from sync.labelling_config import transcription_result

        done = []
        for task_id, key in tasks:
            reference = self.references.get(key)
            if reference is None:
                log.warning("task %s (%s): no reference known; the scripted annotator skips it", task_id, key)
                continue
            self.client.create_annotation(task_id, transcription_result(reference))
            done.append(key)
        return done


def labelled_tasks(client: Any, project_id: int) -> dict[int, str]:
    """Task id -> segment key of every task a human (here: the scripted annotator) has corrected."""
    from habla_ls.served_model import is_labelled, task_key

    return {int(t["id"]): task_key(t) for t in client.iter_tasks(project_id, all_fields=True) if is_labelled(t)}


def labelled_before_round(home: Path, round_number: int, labelled: Mapping[int, str]) -> set[int]:
    """The tasks corrected before this round began: saved when it first begins, read back when it resumes
    (a round cut short has some of its own corrections in Label Studio already)."""
    from habla_ls.finish_journal import write_json_atomic

    path = Path(home) / "reports" / ROUND_MARKER
    try:
        saved = json.loads(path.read_text())
        if saved.get("round") == round_number:
            return {int(i) for i in saved["labelled_before"]}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    write_json_atomic(path, {"round": round_number, "labelled_before": sorted(labelled)})
    return set(labelled)


def gate_record(reports_dir: Path, candidate: str | None, current: str | None) -> dict[str, Any] | None:
    """The gate's decision of ``candidate`` against ``current``, as written by the finish (figures included)."""
    if not candidate or not current or candidate == current:
        return None
    from training.promotion import gate_report_path

    path = gate_report_path(reports_dir, candidate, current, "json")
    try:
        decision = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {
        "passed": decision.get("passed"),
        "candidate_wer": decision.get("candidate_wer"),
        "current_wer": decision.get("current_wer"),
        "candidate_regression_wer": decision.get("candidate_regression_wer"),
        "current_regression_wer": decision.get("current_regression_wer"),
        "failures": decision.get("failures") or [],
        "conditions": [
            {k: c.get(k) for k in ("name", "passed", "decided", "current_wer", "candidate_wer", "point", "ci_low", "ci_high", "limit",
                                   "clips", "words")}
            for c in decision.get("conditions") or []
        ],
        "report": str(path),
    }


def answer_of_last_training(settings: Settings, served: str | None) -> tuple[str | None, str, str | None]:
    """(candidate, outcome, the version it was judged against) of the last finish that trained.

    Its candidate is served (promoted: judged against the version its card names as its baseline) or not
    (refused: judged against what is served). Nothing trained yet: (None, up-to-date, served).
    """
    from habla_ls.finish_journal import load_state
    from ml_backend.registry import read_card, version_dir

    trained = (load_state(settings.home).get("trained") or {}).get("version")
    if not trained:
        return None, UP_TO_DATE, served
    if trained == served:
        return trained, PROMOTED, read_card(version_dir(settings.models_dir, trained)).get("baseline_version")
    return trained, REFUSED, served


def run_term(
    settings: Settings,
    references: Mapping[str, str],
    options: TermOptions,
    *,
    on_round: Callable[[RoundRecord], None] | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Runs (or resumes) the term; returns every round's record, those of earlier runs included.

    ``on_round`` sees each new record before it is logged and may fill ``record.extra``.
    """
    from habla_ls.finish import run_finish
    from habla_ls.finish_result import FinishOptions
    from habla_ls.round import run_round
    from ml_backend.registry import read_current
    from sync.ls_client import LabelStudioClient
    from sync.push import PushOptions, push

    if settings.recordings is None:
        raise ValueError("a term needs the Habla recordings dir (HABLA_RECORDINGS)")

    records = read_log(settings.home)
    with LabelStudioClient.for_project(settings.label_studio_project()) as client:
        annotator = ScriptedAnnotator(client, references)
        for index, target in enumerate(options.schedule):
            if index < len(records):
                continue
            started = time.monotonic()
            push(
                settings.label_studio_project(), settings.work_paths(),
                PushOptions(recordings=settings.recordings, progress=options.progress), client=client,
            )
            from habla_ls.corrections import project_id_of

            project_id = project_id_of(settings, client)
            labelled = labelled_tasks(client, project_id)
            before = labelled_before_round(settings.home, index + 1, labelled)
            # Corrected by this round before a kill cut it short: theirs too, first.
            corrected_earlier = [key for task_id, key in sorted(labelled.items()) if task_id not in before]
            served_before = read_current(settings.models_dir)
            summary = run_round(
                settings, budget=max(1, target - len(labelled)), client=client, strategy=options.strategy,
                seed=options.seed + index,
            )
            ranked_labelled = sorted(r.candidate.task_id for r in summary.ranked if r.candidate.task_id in labelled)
            round_seconds = time.monotonic() - started

            started = time.monotonic()
            echo(SIMULATED_ANNOTATOR_NOTE)
            wanted = max(0, target - len(labelled))
            chosen = [(r.candidate.task_id, r.candidate.key) for r in summary.ranked if r.candidate.task_id not in labelled]
            corrected = annotator.correct(chosen[:wanted])
            annotate_seconds = time.monotonic() - started
            echo(f"round {index + 1}: {summary.strategy} ranked {len(summary.ranked)} task(s); "
                 f"{len(corrected_earlier) + len(corrected)} corrected, {len(labelled) + len(corrected)} in all")

            started = time.monotonic()
            result = run_finish(
                settings,
                FinishOptions(train_config=options.train_config, force=options.force_promotion, progress=options.progress),
            )
            finish_seconds = time.monotonic() - started
            for line in result.lines():
                echo(f"  {line}")
            candidate, outcome, judged_against, detail = result.candidate, result.outcome, served_before, result.detail
            if outcome == UP_TO_DATE and wanted == 0:
                # Resumed after this round's finish had answered but before its record was written (a kill
                # while the caller scored it): record the answer that finish gave, not "up to date".
                candidate, outcome, judged_against = answer_of_last_training(settings, served_before)
                if candidate:
                    detail = f"resumed: this round's finish had trained {candidate} ({outcome} against {judged_against})"
                    echo(f"  {detail}")
            record = RoundRecord(
                round=index + 1,
                strategy=summary.strategy,
                target=target,
                corrected_before=len(before),
                corrected_now=corrected_earlier + corrected,
                ranked=len(summary.ranked),
                ranked_labelled=ranked_labelled,
                served_before=judged_against,
                served_after=read_current(settings.models_dir),
                candidate=candidate,
                outcome=outcome,
                detail=detail,
                gate=gate_record(settings.reports_dir, candidate, judged_against),
                round_seconds=round(round_seconds, 1),
                annotate_seconds=round(annotate_seconds, 1),
                finish_seconds=round(finish_seconds, 1),
                steps=[asdict(step) for step in result.steps],
            )
            if on_round is not None:
                on_round(record)
            entry = {**asdict(record), "corrections": record.corrections}
            _append_log(settings.home, entry)
            records.append(entry)
    return records
