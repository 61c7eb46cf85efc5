"""The finish: pull -> train -> evaluate -> gate -> export -> promote -> deliver -> prefill, as one job.

What `habla-ls finish`, `habla-ls round --finish`, the backend's START_TRAINING webhook and `/train`
(through ``HABLA_LS_TRAIN_COMMAND``) and `habla-ls watch` all run.

- **One at a time.** The job holds the work dir's training lock (:mod:`habla_ls.training_lock`).
- **Export before promote.** A candidate that passed the gate is exported (CTranslate2, checked against
  transformers) before ``CURRENT`` moves, so a failed export never leaves a model served; a refused
  export is an answer like a refused gate.
- **Answers and failures.** A refused candidate is an answer (exit 0). A failing step is one line naming
  the step; nothing after it runs, so the served version and the Habla dir stay as they were.
- **Crash safety.** Each step is journaled in ``<home>/finish.json`` (:mod:`habla_ls.finish_journal`): a
  run that was killed or stopped is resumed where it stopped by the next finish.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from habla_ls.config import Settings
from habla_ls.finish_journal import Manifest, load_state, now_iso, read_manifest, save_state
from habla_ls.finish_result import (
    BUSY,
    FAILED,
    OK,
    PROMOTED,
    REFUSED,
    SKIPPED,
    STARTED,
    STOPPED,
    UP_TO_DATE,
    FinishOptions,
    FinishResult,
    StepRecord,
    one_line,
)
from habla_ls.training_lock import LockBusy, training_lock
from ml_backend.registry import CARD_FILE

log = logging.getLogger(__name__)

STEPS = ("pull", "train", "evaluate", "gate", "export", "promote", "deliver", "prefill")


class StepFailed(RuntimeError):
    def __init__(self, step: str, line: str):
        super().__init__(f"{step} failed: {line}")
        self.step = step
        self.line = line


class _Stop(Exception):
    """Raised between steps when the caller asked to stop."""


class _Finish:
    def __init__(
        self,
        settings: Settings,
        options: FinishOptions,
        on_step: Callable[[StepRecord], None] | None,
        should_stop: Callable[[], bool] | None,
    ):
        self.settings = settings
        self.options = options
        self.on_step = on_step or (lambda record: None)
        self.should_stop = should_stop or (lambda: False)
        self.models_dir = settings.models_dir
        self.state = load_state(settings.home)
        self.result = FinishResult(outcome=FAILED)

    # -- bookkeeping -----------------------------------------------------------------------------------

    def emit(self, record: StepRecord) -> None:
        if record.outcome != STARTED:
            self.result.steps.append(record)
        self.on_step(record)

    def save(self) -> None:
        save_state(self.settings.home, self.state)

    @property
    def run(self) -> dict[str, Any]:
        return self.state["run"]

    def done(self, step: str) -> bool:
        return step in self.run.get("done", [])

    def mark(self, step: str, **fields: Any) -> None:
        self.run.setdefault("done", []).append(step)
        self.run.update(fields)
        self.save()

    def step(self, name: str, work: Callable[[], tuple[str, str]]) -> str:
        """Runs one step; ``work`` returns (outcome, detail). Stops before it if asked to."""
        if self.should_stop():
            raise _Stop(name)
        self.emit(StepRecord(name, STARTED))
        started = time.monotonic()
        try:
            outcome, detail = work()
        except Exception as exc:
            line = one_line(exc)
            log.debug("finish step %s failed", name, exc_info=True)
            self.emit(StepRecord(name, FAILED, line, round(time.monotonic() - started, 2)))
            raise StepFailed(name, line) from exc
        self.emit(StepRecord(name, outcome, detail, round(time.monotonic() - started, 2)))
        return outcome

    # -- the job ---------------------------------------------------------------------------------------

    def __call__(self) -> FinishResult:
        from ml_backend.registry import read_current

        result = self.result
        result.served_before = read_current(self.models_dir)
        try:
            with training_lock(self.settings.home, wait=self.options.wait_for_lock):
                self.state = load_state(self.settings.home)  # another process may have finished meanwhile
                self._steps()
        except LockBusy as exc:
            result.outcome, result.detail = BUSY, str(exc)
        except _Stop as stop:
            result.outcome = STOPPED
            result.detail = f"stopped before {stop.args[0]}; the next finish resumes there"
        except StepFailed as exc:
            result.outcome, result.failed_step, result.detail = FAILED, exc.step, exc.line
            if self.state.get("run"):
                self.run["failed"] = {"step": exc.step, "error": exc.line, "at": now_iso()}
                with contextlib.suppress(OSError):
                    self.save()
        result.served = read_current(self.models_dir)
        return result

    def _steps(self) -> None:
        result = self.result
        run = self.state.get("run")
        if isinstance(run, dict):
            log.info("resuming the finish started %s (done: %s)", run.get("started"), ", ".join(run.get("done", [])) or "nothing")
            run.pop("failed", None)
        else:
            self.state["run"] = {"started": now_iso(), "pid": os.getpid(), "done": []}
            self.save()  # from here on a kill leaves a journal that the next finish resumes
        candidate = self.run.get("candidate")
        if self.done("train") and not (candidate and (self.models_dir / candidate / CARD_FILE).is_file()):
            log.warning("the candidate %s of the unfinished finish is gone from %s; starting over", candidate, self.models_dir)
            self.run["done"] = []
        # Until a candidate is trained, a resumed run pulls again: corrections made meanwhile are used too.
        if not self.done("train"):
            self.run["done"] = []
            self.step("pull", self._pull)
            manifest = read_manifest(self.settings)
            trained = self.state.get("trained") or {}
            if not manifest.rows:
                self._end(UP_TO_DATE, "nothing to train on: no usable corrections in Label Studio yet")
                return
            if trained.get("rows") == manifest.digests:
                self._end(UP_TO_DATE, f"up to date: nothing new since {trained.get('version')} was trained")
                return
            self.step("train", lambda: self._train(manifest))
        result.candidate = self.run["candidate"]
        if not self.done("evaluate"):
            self.step("evaluate", self._evaluate)
            self.mark("evaluate")
        # Each may refuse the candidate: an answer that ends the finish, not a failure.
        for name, action in (("gate", self._gate), ("export", self._export), ("promote", self._promote)):
            if self.done(name):
                continue
            if self.step(name, action) == REFUSED:
                self._end(REFUSED, result.detail)
                return
            self.mark(name)
        if not self.done("deliver"):
            self.step("deliver", self._deliver)
            self.mark("deliver", delivered=result.delivered)
        result.delivered = result.delivered or self.run.get("delivered")
        if not self.done("prefill"):
            self.step("prefill", self._prefill)
        self._end(PROMOTED, f"promoted {result.candidate}")

    def _end(self, outcome: str, detail: str) -> None:
        from ml_backend.registry import read_current

        result = self.result
        result.outcome, result.detail = outcome, detail
        self.state["last"] = {
            "at": now_iso(),
            "outcome": outcome,
            "candidate": result.candidate,
            "served": read_current(self.models_dir),
            "detail": detail,
            "reasons": result.reasons[:20],
            "delivered": result.delivered,
        }
        self.state["run"] = None
        self.save()

    # -- the steps themselves --------------------------------------------------------------------------

    def _pull(self) -> tuple[str, str]:
        from sync.pull import pull

        summary = pull(self.settings.label_studio_project(), self.settings.work_paths())
        for problem in summary.problems:
            log.warning("%s", problem)
        return OK, (
            f"{summary.usable} usable correction(s) ({summary.new} new, {summary.updated} updated, "
            f"{summary.removed} removed); manifest {'written' if summary.manifest_changed else 'unchanged'}"
        )

    def _train(self, manifest: Manifest) -> tuple[str, str]:
        from ml_backend.registry import list_versions
        from training.options import TrainOptions
        from training.train import train

        run = self.run
        config = self.options.train_config
        options = TrainOptions.from_file(config) if config else TrainOptions()
        # The same data as a training this journal saw interrupted: continue from its checkpoint. Other
        # data: checkpoints in the run dir belong to another dataset and are discarded.
        same_data = run.get("training_manifest") == manifest.fingerprint
        registered_since = [
            v for v in list_versions(self.models_dir)
            if v not in run.get("versions_before", []) and v.rsplit("-v", 1)[0] == options.name
        ]
        if same_data and "versions_before" in run and registered_since:
            # Killed between the registration and the journal: the version is complete (registered by
            # one rename), so it is the candidate rather than a reason to train again.
            self._trained(registered_since[-1], manifest)
            return OK, f"{registered_since[-1]} was registered by the interrupted training; using it"
        run.update(training_manifest=manifest.fingerprint, versions_before=list_versions(self.models_dir))
        self.save()
        options = options.with_overrides(resume=True) if same_data else options.with_overrides(restart=True)
        options = options.with_overrides(progress=self.options.progress)
        result = train(options, home=self.settings.home)
        if result.version is None:
            raise RuntimeError("training registered no version")
        self._trained(result.version, manifest)
        wer = "-" if result.validation_wer is None else f"{result.validation_wer:.4f}"
        return OK, (
            f"registered {result.version} ({options.method}, {result.train_clips} clips, {result.global_step} steps, "
            f"validation WER {wer}{', resumed' if result.resumed_from else ''})"
        )

    def _trained(self, version: str, manifest: Manifest) -> None:
        """Journals the candidate and what it was trained on (the count of new corrections restarts)."""
        self.state["trained"] = {"version": version, "at": now_iso(), "manifest": manifest.fingerprint, "rows": manifest.digests}
        self.mark("train", candidate=version)

    def _versions_to_compare(self) -> list[str]:
        from ml_backend.registry import read_current

        candidate, served = self.result.candidate, read_current(self.models_dir)
        return [candidate] + ([served] if served and served != candidate else [])

    def _evaluate(self) -> tuple[str, str]:
        from training.evaluate import evaluate

        evaluations = evaluate(
            self.settings.home, self._versions_to_compare(), regression_manifest=self.settings.regression_manifest,
            progress=self.options.progress,
        )
        parts = []
        for e in evaluations:
            test = "-" if e.test_wer is None else f"{e.test_wer:.4f}"
            regression = "-" if e.regression_wer is None else f"{e.regression_wer:.4f}"
            parts.append(f"{e.version} test WER {test}, standard-speech WER {regression}")
        return OK, "; ".join(parts)

    def _gate_arguments(self) -> dict[str, Any]:
        from training.gate import GateOptions
        from training.promotion import expected_set_ids

        return {
            "options": GateOptions(),
            "reports_dir": self.settings.reports_dir,
            "expected_set_ids": expected_set_ids(self.settings.regression_manifest),
        }

    def _decide(self) -> Any:
        from training.promotion import decide

        candidate = self.result.candidate
        decision = decide(self.models_dir, candidate, **self._gate_arguments())
        if decision.needs_evaluation and decision.current not in (None, candidate):
            # CURRENT moved since the evaluation (a promotion or rollback by hand): compare anew.
            self._evaluate()
            decision = decide(self.models_dir, candidate, **self._gate_arguments())
        return decision

    def _gate(self) -> tuple[str, str]:
        from training.promotion import write_decision

        decision = self._decide()
        report = write_decision(decision, self.settings.reports_dir)
        where = f"; slice table {report}" if report else ""
        if decision.passed or decision.current == decision.candidate:
            return OK, f"{decision.candidate} passes against {decision.current or 'nothing served'}{where}"
        # Each reason is one line "<condition>: <why>": the log line names the conditions, the report says why.
        failed = ", ".join(reason.split(":", 1)[0] for reason in decision.reasons) or f"{len(decision.failures)} condition(s)"
        self.result.reasons = list(decision.reasons)
        if self.options.force:
            return OK, f"the gate refused {decision.candidate} (failed: {failed}) but --force overrides it{where}"
        self.result.detail = f"the gate refused {decision.candidate} against {decision.current} (failed: {failed}){where}"
        return REFUSED, self.result.detail

    def _export(self) -> tuple[str, str]:
        from training.ct2_convert import ExportError
        from training.export import export_version

        # Forced, a refused check would be overridden anyway: export without spending time on it.
        check = self.options.export_check and not self.options.force
        try:
            exported = export_version(self.settings.home, self.result.candidate, check=check)
        except ExportError as exc:
            self.result.detail = f"the export of {self.result.candidate} was refused: {one_line(exc)}"
            return REFUSED, self.result.detail
        return OK, ", ".join(f"{q} {path}" for q, path in exported.outputs.items())

    def _promote(self) -> tuple[str, str]:
        from training.promotion import promote

        candidate = self.result.candidate
        decision = promote(self.models_dir, candidate, force=self.options.force, **self._gate_arguments())
        if decision.current == candidate:
            return OK, f"{candidate} is served"
        if decision.passed or self.options.force:
            return OK, f"{candidate} is served (was {decision.current or 'nothing'})"
        # The gate passed a moment ago: CURRENT changed in between.
        self.result.reasons = list(decision.reasons)
        self.result.detail = f"the gate refused {candidate} against {decision.current}, served since the evaluation"
        return REFUSED, self.result.detail

    def _deliver(self) -> tuple[str, str]:
        from training.deliver import deliver

        habla_dir = self.settings.habla_model_dir
        if habla_dir is None:
            return SKIPPED, "no Habla model dir set (habla_model_dir / HABLA_LS_HABLA_MODEL_DIR)"
        delivery = deliver(
            self.models_dir, self.result.candidate, Path(habla_dir),
            env_file=self.settings.habla_env_file, habla_path=self.settings.habla_model_path,
        )
        self.result.delivered = delivery.whisper_model
        kept = f"; {delivery.previous} kept for rollback" if delivery.previous else ""
        return OK, f"WHISPER_MODEL={delivery.whisper_model}{kept}"

    def _prefill(self) -> tuple[str, str]:
        from habla_ls.serving_change import after_serving_change

        lines: list[str] = []
        after_serving_change(self.settings, predict=True, echo=lines.append)
        return OK, "; ".join(line.strip() for line in lines if line.strip())[:500]


def run_finish(
    settings: Settings,
    options: FinishOptions | None = None,
    *,
    on_step: Callable[[StepRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FinishResult:
    """Runs (or resumes) the finish; never raises for a failing step (the result says which and why).

    ``on_step`` sees every step as it starts (outcome ``started``) and ends; ``should_stop`` is asked
    before each step, and a True answer ends the job there with the journal kept for the next finish.
    """
    return _Finish(settings, options or FinishOptions(), on_step, should_stop)()
