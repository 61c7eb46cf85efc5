"""The finish: pull -> train -> evaluate -> gate -> export -> promote -> deliver -> prefill, as one job.

What `habla-ls finish`, `habla-ls round --finish`, the backend's START_TRAINING webhook and `/train`
(through ``HABLA_LS_TRAIN_COMMAND``) and `habla-ls watch` all run.

- **One at a time.** The job holds ``<home>/.training.lock``, the lock of the backend's training queue,
  across processes. When the queue runs this job as its child, the child joins the lock its parent
  holds (the descriptor named by ``HABLA_LS_TRAINING_LOCK_FD``) instead of waiting for it.
- **Export before promote.** A candidate that passed the gate is exported (CTranslate2, checked against
  transformers) before ``CURRENT`` moves, so a failed export never leaves a model served; a refused
  export is an answer like a refused gate.
- **Answers and failures.** A refused candidate is an answer (exit 0). A failing step is one line naming
  the step; nothing after it runs, so the served version and the Habla dir stay as they were.
- **Crash safety.** ``<home>/finish.json`` (replaced atomically) journals the run: the manifest it
  trains on and the steps done. A run that was killed or stopped is resumed where it stopped by the
  next finish (an interrupted training resumes from its checkpoint when the data is the same); every
  step is safe to redo (pull and promote are idempotent, registry writes are atomic).
- **What was trained on.** After a training the journal keeps one digest per manifest row, so "human
  corrections since the last training" (what `watch` counts) is a comparison with the manifest, and a
  finish with nothing new to learn answers "up to date" instead of training again on the same data.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from habla_ls.config import Settings
from ml_backend.registry import CARD_FILE

log = logging.getLogger(__name__)

STATE_FILE = "finish.json"
STEPS = ("pull", "train", "evaluate", "gate", "export", "promote", "deliver", "prefill")

# Outcomes of a step (StepRecord.outcome) and of a whole finish (FinishResult.outcome).
STARTED, OK, SKIPPED, REFUSED, FAILED, STOPPED = "started", "ok", "skipped", "refused", "failed", "stopped"
PROMOTED, UP_TO_DATE, BUSY = "promoted", "up-to-date", "busy"


class LockBusy(RuntimeError):
    """Another process holds the training lock (``str()`` names it)."""


class StepFailed(RuntimeError):
    def __init__(self, step: str, line: str):
        super().__init__(f"{step} failed: {line}")
        self.step = step
        self.line = line


class _Stop(Exception):
    """Raised between steps when the caller asked to stop."""


@dataclass(frozen=True)
class StepRecord:
    step: str
    outcome: str
    detail: str = ""
    duration: float = 0.0


@dataclass(frozen=True)
class FinishOptions:
    train_config: Path | None = None  # training options file, as `habla-ls train --config`
    wait_for_lock: bool = True
    force: bool = False  # promote even if the gate refuses (recorded in the card and history); no export check
    export_check: bool = True
    progress: bool = True


@dataclass
class FinishResult:
    outcome: str  # promoted | refused | up-to-date | failed | stopped | busy
    served_before: str | None = None
    served: str | None = None
    candidate: str | None = None
    failed_step: str | None = None
    detail: str = ""
    reasons: list[str] = field(default_factory=list)
    delivered: str | None = None
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.outcome == FAILED

    def lines(self) -> list[str]:
        out = []
        if self.outcome == REFUSED:
            out.append(f"not promoted: {self.detail}")
            out += [f"  {reason}" for reason in self.reasons]
        elif self.outcome == PROMOTED:
            out.append(f"promoted {self.candidate} (was {self.served_before or 'nothing'})")
        elif self.outcome in (UP_TO_DATE, STOPPED, BUSY):
            out.append(self.detail)
        elif self.outcome == FAILED:
            if self.served == self.served_before:
                after = "the served model and the Habla dir are unchanged"
            else:
                after = f"{self.served} is served; the next finish retries {self.failed_step}"
            out.append(f"{self.failed_step} failed: {self.detail} ({after})")
        if self.delivered:
            out.append(f"delivered to Habla: WHISPER_MODEL={self.delivered}")
        out.append(f"served model: {self.served or 'none'}")
        return out


# ------------------------------------------------------------------------------------------- the lock


def lock_path(home: Path) -> Path:
    from ml_backend.training_queue import TRAINING_LOCK_FILE

    return Path(home) / TRAINING_LOCK_FILE


def _inherited_lock(path: Path) -> bool:
    """True when our parent (the backend's queue) holds the lock and passed its descriptor down."""
    from ml_backend.training_queue import TRAINING_LOCK_FD_ENV

    value = os.environ.get(TRAINING_LOCK_FD_ENV, "")
    if not value.isdigit():
        return False
    try:
        held, ours = os.fstat(int(value)), os.stat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (ours.st_dev, ours.st_ino)


def lock_holder(home: Path) -> str:
    try:
        pid = lock_path(home).read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def training_lock(home: Path, *, wait: bool = True) -> Iterator[None]:
    """Hold the work dir's training lock; ``wait=False`` raises :class:`LockBusy` instead of waiting."""
    path = lock_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _inherited_lock(path):
        yield
        return
    # "a+": opening must not truncate the pid the holder wrote.
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusy(f"a training job already runs in {home} ({lock_holder(home)})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------- journal and counts


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def state_path(home: Path) -> Path:
    return Path(home) / STATE_FILE


def load_state(home: Path) -> dict[str, Any]:
    path = state_path(home)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # Written by atomic rename, so only a hand edit gets here: start over rather than guess.
        log.warning("%s: unreadable (%s); starting with no record of earlier finishes", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def save_state(home: Path, state: dict[str, Any]) -> None:
    write_json_atomic(state_path(home), state)


@dataclass(frozen=True)
class Manifest:
    fingerprint: str  # sha256 of the manifest's bytes ("" when there is none)
    rows: dict[str, tuple[str, float]]  # segment key -> (digest of audio + transcript, duration s)
    annotated_at: dict[str, str] = field(default_factory=dict)  # segment key -> the correction's time (ISO)

    @property
    def digests(self) -> dict[str, str]:
        return {key: digest for key, (digest, _) in self.rows.items()}


def read_manifest(settings: Settings) -> Manifest:
    from sync.manifest import MANIFEST_JSONL

    try:
        data = (settings.datasets_dir / MANIFEST_JSONL).read_bytes()
    except FileNotFoundError:
        return Manifest("", {})
    rows: dict[str, tuple[str, float]] = {}
    annotated_at: dict[str, str] = {}
    for line in data.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            row = json.loads(line)
            key = str(row.get("segment_key") or row["audio_path"])
            digest = hashlib.sha256(f"{row.get('sha256') or row['audio_path']}\0{row['transcript']}".encode()).hexdigest()[:16]
            rows[key] = (digest, float(row.get("duration") or 0.0))
            annotated_at[key] = str(row.get("annotated_at") or "")
    return Manifest(hashlib.sha256(data).hexdigest(), rows, annotated_at)


@dataclass(frozen=True)
class Corrections:
    """Usable human corrections in the manifest that the last training did not see (new or changed)."""

    count: int
    minutes: float
    since_version: str | None  # the version trained last (None: no training recorded)
    since: str | None  # when


def _trained_since(models_dir: Path, after: str | None) -> tuple[str, str] | None:
    """(version, created) of the newest version trained (it has a parent) after ``after``: a training this
    journal did not record (`habla-ls train` by hand, the GPU trainer, the demo)."""
    from ml_backend.registry import list_versions, read_card

    after = _utc(after)
    newest = None
    for version in list_versions(models_dir):
        card = read_card(models_dir / version)
        created = _utc(card.get("created"))
        if card.get("parent") and created and (after is None or created > after) and (newest is None or created > newest[1]):
            newest = (version, created)
    return newest


def _utc(stamp: Any) -> str | None:
    """An ISO time in UTC to the second, comparable as text (None when missing or unreadable)."""
    try:
        parsed = dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC).isoformat(timespec="seconds") if parsed.tzinfo else None


def corrections_since_training(settings: Settings, state: dict[str, Any] | None = None) -> Corrections:
    """Corrections the last training did not see: new or changed since the training this journal recorded,
    and, when a version was trained outside it since, not annotated before that version was made."""
    state = load_state(settings.home) if state is None else state
    trained = state.get("trained") or {}
    seen = trained.get("rows") or {}
    manifest = read_manifest(settings)
    new = {key: seconds for key, (digest, seconds) in manifest.rows.items() if seen.get(key) != digest}
    version, since = trained.get("version"), trained.get("at")
    outside = _trained_since(settings.models_dir, since)
    if outside is not None:
        version, since = outside
        new = {key: seconds for key, seconds in new.items() if (_utc(manifest.annotated_at.get(key)) or "") > since}
    return Corrections(len(new), sum(new.values()) / 60.0, version, since)


def interrupted_run(settings: Settings) -> dict[str, Any] | None:
    """The journal of a finish that did not end (killed, stopped, or a step failed), if any."""
    run = load_state(settings.home).get("run")
    return run if isinstance(run, dict) else None


# ---------------------------------------------------------------------------------------------- steps


def one_line(exc: BaseException) -> str:
    """An error as one line for people: a full disk said plainly, else the message's first line."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"disk full{where} (no space left on device)"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first or type(exc).__name__


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
        from training.promotion import _expected_set_ids

        return {
            "options": GateOptions(),
            "reports_dir": self.settings.reports_dir,
            "expected_set_ids": _expected_set_ids(self.settings.regression_manifest),
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
        from habla_ls.prefill import after_serving_change

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


# ------------------------------------------------------------------------------------------------ CLI


def format_step(record: StepRecord) -> str:
    took = f" ({record.duration:.1f} s)" if record.duration else ""
    detail = f": {record.detail}" if record.detail else ""
    return f"{record.step:<9}{record.outcome}{detail}{took}"


def append_jsonl(path: Path, step: str, outcome: str, detail: str = "", duration: float = 0.0) -> dict[str, Any]:
    """One JSON object per line (time, step, outcome, detail, duration); a line torn by a kill is
    skipped by readers. The watch's log and ``finish --log-jsonl`` share it."""
    entry = {"time": now_iso(), "step": step, "outcome": outcome, "detail": detail, "duration": round(duration, 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return entry


@click.command("finish")
@click.option("--train-config", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Training options file (as `habla-ls train --config`).")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait for a training job that already runs in this work dir (else exit 75 at once).")
@click.option("--force", is_flag=True,
              help="Promote even if the gate refuses (recorded in the card and history), and export without the check.")
@click.option("--log-jsonl", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also append each step's start and outcome to this file as JSON lines (step names 'finish:<step>').")
@click.pass_obj
def finish_command(settings: Settings, train_config: Path | None, wait: bool, force: bool, log_jsonl: Path | None) -> None:
    """Pull, train, evaluate, gate, export, promote and deliver: the end of a round, as one job.

    \b
    Steps (each printed with its outcome):
      pull      corrections from Label Studio -> the dataset manifest
      train     fine-tune the served version on them (nothing new since the last training: stop here)
      evaluate  candidate and served version on the same test split and standard-speech set
      gate      the promotion gate (a refusal is an answer, not an error)
      export    CTranslate2 export, checked, before anything is served
      promote   CURRENT -> the candidate; the backend serves it from its next request
      deliver   the CTranslate2 dirs into the Habla model dir, when habla_model_dir is set
      prefill   predictions of the new version for unlabelled tasks; the labelling page's prefill

    One job at a time per work dir (the backend's webhook and `habla-ls watch` run this same job).
    SIGTERM stops it after the current step. An interrupted finish is resumed where it stopped by the
    next one. A failing step is one line; the served model and the Habla dir stay as they were (exit 1).
    """
    stop = StopFlag.install()

    def on_step(record: StepRecord) -> None:
        if log_jsonl is not None:
            append_jsonl(log_jsonl, f"finish:{record.step}", record.outcome, record.detail, record.duration)
        echo_step(record)

    try:
        result = run_finish(
            settings, FinishOptions(train_config=train_config, wait_for_lock=wait, force=force),
            on_step=on_step, should_stop=stop.is_set,
        )
    finally:
        stop.restore()
    if result.failed:
        click.echo(f"error: {result.lines()[0]}", err=True)
        sys.exit(1)
    for line in result.lines():
        click.echo(line)
    if result.outcome == BUSY:
        sys.exit(75)  # EX_TEMPFAIL: try again later


def echo_step(record: StepRecord) -> None:
    """Prints a finished step for people (not its start; nor a failure, which the closing error line says)."""
    if record.outcome not in (STARTED, FAILED):
        click.echo(format_step(record))


class StopFlag:
    """SIGTERM and Ctrl-C set a flag that long jobs check between steps; a second Ctrl-C interrupts."""

    def __init__(self) -> None:
        self._set = False
        self._previous: dict[int, Any] = {}

    @classmethod
    def install(cls, on_stop: Callable[[str], None] | None = None) -> StopFlag:
        flag = cls()

        def handler(signum: int, _frame: Any) -> None:
            if flag._set and signum == signal.SIGINT:
                raise KeyboardInterrupt
            flag._set = True
            (on_stop or (lambda name: click.echo(f"{name}: stopping after the current step", err=True)))(
                signal.Signals(signum).name
            )

        for signum in (signal.SIGTERM, signal.SIGINT):
            flag._previous[signum] = signal.signal(signum, handler)
        return flag

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
