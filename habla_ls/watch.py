"""The watch (:class:`Watcher`): the loop running by itself, one pass after another.

Each pass, every ``interval`` seconds:

1. **push** the sessions Habla has finished (a session without ``metadata.json`` is still recording and
   waits); a file that cannot be used is one log line, once;
2. **predict** and rank the tasks (the round: :func:`habla_ls.round.run_round`) when tasks were added
   or the served version changed since the last round;
3. **count** the human corrections since the last training (pulled into the manifest; compared with
   what the last training saw, see :mod:`habla_ls.finish_journal`);
4. when the count or the minutes of audio reach the thresholds, or an earlier finish was interrupted,
   run the **finish** (pull, train, evaluate, gate, export, promote, deliver, prefill).

Every step's outcome is one JSON line in ``<home>/reports/watch.jsonl``; ``<home>/watch.json`` holds the
last pass, the next action and why (:mod:`habla_ls.watch_state`).

A failing step (Label Studio down, a full disk, ...) ends the pass with one line and the next pass waits
longer, doubling up to :data:`~habla_ls.watch_state.BACKOFF_CAP`; a failing finish backs off on its own
while pushing and ranking go on at the usual interval. SIGTERM (or Ctrl-C) stops the watch between
steps: the running step completes, then it exits 0. Nothing depends on a clean exit: every step is safe
to redo, so after a kill -9 the next start carries on (an interrupted finish is resumed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from habla_ls.config import Settings
from habla_ls.finish_journal import (
    corrections_since_training,
    interrupted_run,
    load_state,
    now_iso,
    write_json_atomic,
)
from habla_ls.finish_result import BUSY, FAILED, OK, SKIPPED, STARTED, STOPPED, one_line
from habla_ls.training_lock import LockBusy, training_lock
from habla_ls.watch_state import (
    WatchLog,
    WatchOptions,
    backoff,
    current_process_record,
    load_watch_state,
    log_path,
    state_path,
)

log = logging.getLogger(__name__)

PROBLEMS_REMEMBERED = 2000  # problem lines already logged (so a corrupt file is reported once)


class StepError(RuntimeError):
    """A pass step failed; already logged."""


@dataclass
class StepNote:
    """What a pass step says about itself: its outcome and the parts of its one-line detail."""

    outcome: str = OK
    parts: list[str] = field(default_factory=list)

    def skip(self, *parts: str) -> None:
        self.outcome = SKIPPED
        self.parts += parts


@dataclass
class PassResult:
    failed: bool = False
    stopped: bool = False
    finish: str | None = None  # the finish's outcome when one ran


class Watcher:
    def __init__(self, settings: Settings, options: WatchOptions, *, echo: Callable[[str], None] | None = None):
        self.settings = settings
        self.options = options
        self.stop_event = threading.Event()
        self.log = WatchLog(log_path(settings.home), echo)
        self.state = load_watch_state(settings.home)

    # -- state -----------------------------------------------------------------------------------------

    def save(self) -> None:
        write_json_atomic(state_path(self.settings.home), self.state)

    def set_next(self, at: float, action: str, why: str) -> None:
        self.state["next"] = {"at": _iso(at), "action": action, "why": why}

    def stop_requested(self) -> bool:
        return self.stop_event.is_set()

    # -- steps -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[StepNote]:
        """Times a step and logs its outcome and detail; an exception becomes one log line and
        :class:`StepError`."""
        note = StepNote()
        started = time.monotonic()
        try:
            yield note
        except Exception as exc:
            log.debug("watch step %s failed", name, exc_info=True)
            self.log.write(name, FAILED, one_line(exc), time.monotonic() - started)
            self.state["last_failure"] = {"at": now_iso(), "step": name, "error": one_line(exc)}
            raise StepError(name) from exc
        self.log.write(name, note.outcome, "; ".join(p for p in note.parts if p), time.monotonic() - started)

    def _problem(self, step: str, line: str) -> None:
        """One log line per problem, the first time it is seen (a corrupt file stays until fixed). Known
        by its file and the kind of reason: details in parentheses may differ from one pass to the next."""
        seen = self.state.setdefault("problems_seen", [])
        key = line.split(" (")[0]
        if key in seen:
            return
        seen.append(key)
        del seen[:-PROBLEMS_REMEMBERED]
        self.log.write(step, SKIPPED, line)

    def push(self) -> int:
        """Pushes the finished sessions; returns how many tasks were added or given new audio."""
        from sync.habla import scan_recordings
        from sync.push import PushOptions, push

        recordings = self.settings.recordings
        assert recordings is not None
        with self.step("push") as note:
            if not recordings.is_dir():
                raise FileNotFoundError(f"recordings dir {recordings} not found (is Habla's disk mounted?)")
            scan = scan_recordings(recordings)
            finished = tuple(s.name for s in scan.sessions if not s.live)
            live = [s.name for s in scan.sessions if s.live]
            waiting = f"{len(live)} live session(s) wait until Habla stops them" if live else ""
            if not finished:
                for problem in scan.problems:
                    self._problem("push", str(problem))
                note.skip("no finished Habla session yet", waiting)
                return 0
            summary = push(
                self.settings.label_studio_project(), self.settings.work_paths(),
                PushOptions(recordings=recordings, sessions=finished, progress=False),
            )
            for problem in summary.skipped:
                self._problem("push", str(problem))
            note.parts += [summary.lines()[0], waiting]
            return summary.new + summary.audio_updated

    def predict(self, changed: int) -> None:
        from habla_ls.round import run_round
        from ml_backend.registry import read_current

        served = read_current(self.settings.models_dir)
        ranked = self.state.get("ranked") or {}
        with self.step("predict") as note:
            if not self._pushed():
                note.skip("nothing pushed to Label Studio yet")
                return
            if not (changed or ranked.get("pending") or ranked.get("version") != served):
                note.skip(f"nothing new to rank (last round with {served})")
                return
            # Marked before the round: a kill during it leaves "pending" and the next pass redoes it.
            self.state["ranked"] = {**ranked, "pending": True}
            self.save()
            summary = run_round(self.settings)
            for line in summary.unusable:
                self._problem("predict", line)
            self.state["ranked"] = {"version": summary.served_version, "at": now_iso(), "pending": False}
            note.parts.append(
                f"{summary.predicted} task(s) predicted with {summary.served_version} ({summary.decoded} decoded now), "
                f"{len(summary.ranked)} ranked, {summary.predictions_created} prediction(s) stored"
            )

    def count(self) -> tuple[bool, str]:
        """Pulls, then (should the finish run, why)."""
        from sync.pull import pull

        with self.step("count") as note:
            resume = interrupted_run(self.settings)
            if resume is not None:
                done = ", ".join(resume.get("done", [])) or "nothing"
                failed = resume.get("failed")
                why = f"an earlier finish did not end (done: {done}{'; failed at ' + failed['step'] if failed else ''})"
                note.parts.append(why)
                return True, why
            if not self._pushed():
                note.skip("nothing pushed to Label Studio yet")
                return False, "nothing pushed to Label Studio yet"
            try:
                # Not while a finish elsewhere trains: its manifest must not change under it.
                with training_lock(self.settings.home, wait=False):
                    summary = pull(self.settings.label_studio_project(), self.settings.work_paths())
            except LockBusy as exc:
                note.skip(f"{exc}; counting next pass")
                return False, str(exc)
            corrections = corrections_since_training(self.settings, load_state(self.settings.home))
            since = f"since {corrections.since_version} was trained" if corrections.since_version else "(no training yet)"
            self.state["corrections"] = {
                "count": corrections.count,
                "minutes": round(corrections.minutes, 2),
                "since_version": corrections.since_version,
                "usable": summary.usable,
                "threshold": self.options.threshold_text(),
            }
            reached = self.options.reached(corrections.count, corrections.minutes)
            why = (
                f"{corrections.count} correction(s), {corrections.minutes:.1f} min of audio {since}; "
                f"threshold {self.options.threshold_text()}{' reached' if reached else ''}"
            )
            note.parts.append(why)
            return reached, why

    def _pushed(self) -> bool:
        """Whether this work dir has pushed tasks to the project (else there is nothing to rank or pull)."""
        from sync.ledger import Ledger

        if not self.settings.ledger_path.exists():
            return False
        with Ledger(self.settings.ledger_path) as ledger:
            project_id = ledger.project_id(self.settings.label_studio_url, self.settings.project_title)
            return project_id is not None and ledger.counts(project_id)["pushed"] > 0

    def finish(self, why: str) -> str:
        """Runs `habla-ls finish` as a child process (its steps go to the same log, its output to
        ``reports/finish.log``); returns its outcome."""
        retry_at = self.state.get("finish_retry_at")
        if retry_at and time.time() < retry_at:
            if self.state.get("finish_wait_logged") != retry_at:  # said once per wait, not every pass
                self.state["finish_wait_logged"] = retry_at
                self.log.write("finish", SKIPPED, f"retrying after {_iso(retry_at)} (backoff after a failure)")
            return SKIPPED
        started = time.monotonic()
        failed: dict[str, Any] = {}
        code = self._run_finish_process()
        journal = load_state(self.settings.home)
        last, run = journal.get("last") or {}, journal.get("run") or {}
        if code == 0 and run:
            outcome, line = STOPPED, "stopped between steps; the next finish resumes it"
        elif code == 0:
            outcome, line = str(last.get("outcome") or OK), str(last.get("detail") or "")
        elif code == 75:
            outcome, line = BUSY, f"a training job already runs in {self.settings.home}; next pass"
        else:
            outcome = FAILED
            failed = run.get("failed") or {}
            line = f"{failed.get('step')}: {failed.get('error')}" if failed else (
                f"`habla-ls finish` ended with exit code {code} (its output: {self.finish_log})"
            )
        if outcome == FAILED:
            failures = int(self.state.get("finish_failures", 0)) + 1
            self.state["finish_failures"] = failures
            self.state["finish_retry_at"] = time.time() + backoff(self.options.interval, failures)
            self.state["last_failure"] = {"at": now_iso(), "step": f"finish:{failed.get('step', '?')}" if failed else "finish",
                                          "error": line}
        elif outcome not in (STOPPED, BUSY):
            self.state["finish_failures"] = 0
            self.state.pop("finish_retry_at", None)
        self.state["last_finish"] = {"at": now_iso(), "outcome": outcome, "why": why, "detail": line}
        # A failing step already logged its one line; a finish that died without one gets it here.
        if outcome != FAILED or not failed:
            self.log.write("finish", outcome, line, time.monotonic() - started)
        return outcome

    @property
    def finish_log(self) -> Path:
        return Path(self.settings.home) / "reports" / "finish.log"

    def finish_command(self) -> list[str]:
        command = [sys.executable, "-m", "habla_ls.cli", "--home", str(Path(self.settings.home).resolve())]
        if self.options.config_file:
            command += ["--config", str(self.options.config_file)]
        command += ["finish", "--no-wait", "--log-jsonl", str(self.log.path.resolve())]
        if self.options.train_config:
            command += ["--train-config", str(self.options.train_config)]
        if self.options.force_promotion:
            command.append("--force")
        return command

    def _run_finish_process(self) -> int:
        """The finish's exit code. SIGTERM to the watch is passed on (the finish stops after its current
        step); if the watch itself is killed, the kernel kills the finish too (the next start resumes it)."""
        self.finish_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.finish_log, "ab") as out:
            out.write(f"\n== {now_iso()} {' '.join(self.finish_command())}\n".encode())
            out.flush()
            child = subprocess.Popen(
                self.finish_command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            forwarded = False
            shown = self.log.path.stat().st_size if self.log.path.exists() else 0
            while True:
                try:
                    code = child.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    code = None
                    if self.stop_requested() and not forwarded:
                        child.send_signal(signal.SIGTERM)
                        forwarded = True
                shown = self._echo_finish_steps(shown)
                if code is not None:
                    return code

    def _echo_finish_steps(self, offset: int) -> int:
        """Shows people the finish's steps as its child logs them; returns the offset read up to."""
        try:
            with open(self.log.path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
        except OSError:
            return offset
        complete = data[: data.rfind(b"\n") + 1]
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if str(entry.get("step", "")).startswith("finish:") and entry.get("outcome") != STARTED:
                    took = f" ({entry['duration']:.1f} s)" if entry.get("duration", 0) >= 0.05 else ""
                    detail = f": {entry['detail']}" if entry.get("detail") else ""
                    self.log.echo(f"{entry['time']} {entry['step']}: {entry['outcome']}{detail}{took}")
        return offset + len(complete)

    # -- the loop --------------------------------------------------------------------------------------

    def run_pass(self) -> PassResult:
        result = PassResult()
        self.state["last_pass"] = {"started": now_iso(), "finished": None, "outcome": "running"}
        self.save()
        try:
            if self._stopping(result):
                return result
            changed = self.push()
            if self._stopping(result):
                return result
            self.predict(changed)
            if self._stopping(result):
                return result
            run, why = self.count()
            self.state["waiting_for"] = None if run else why
            if run and not self._stopping(result):
                result.finish = self.finish(why)
                result.failed = result.finish == FAILED
                result.stopped = result.finish == STOPPED
        except StepError:
            result.failed = True
        finally:
            outcome = STOPPED if result.stopped else FAILED if result.failed else OK
            self.state["last_pass"].update(finished=now_iso(), outcome=outcome)
            # A failing finish backs off on its own (finish_retry_at): pushing and ranking go on.
            pass_failed = result.failed and result.finish != FAILED
            self.state["pass_failures"] = int(self.state.get("pass_failures", 0)) + 1 if pass_failed else 0
            self.save()
        return result

    def _stopping(self, result: PassResult) -> bool:
        result.stopped = result.stopped or self.stop_requested()
        return result.stopped

    def plan_next(self, result: PassResult) -> float:
        """Seconds until the next pass; records the next action and why."""
        failures = int(self.state.get("pass_failures", 0))
        delay = backoff(self.options.interval, failures) if failures else self.options.interval
        at = time.time() + delay
        failure = self.state.get("last_failure") or {}
        if failures:
            # The error itself is in last_failure (status prints it once, on its own line).
            why = f"{failures} failed pass(es) in a row, the last at {failure.get('step')}"
            self.set_next(at, "retry the pass", why)
        elif interrupted_run(self.settings) is not None:
            retry = self.state.get("finish_retry_at")
            when = max(at, retry) if retry else at
            self.set_next(when, "resume the finish", f"it failed at {failure.get('step')}: {failure.get('error')}"
                          if result.finish == FAILED else "an earlier finish did not end")
        else:
            self.set_next(at, "push, predict and count", self.state.get("waiting_for") or "the usual interval")
        self.save()
        return delay

    def run(self) -> int:
        self.state["process"] = current_process_record()
        self.state["options"] = {
            "interval": self.options.interval,
            "threshold": self.options.threshold_text(),
            "recordings": str(self.settings.recordings),
        }
        self.save()
        started = f"pid {os.getpid()}; every {self.options.interval:g} s; finish at {self.options.threshold_text()}"
        self.log.write("watch", STARTED, started)
        self.log.echo(f"watching {self.settings.recordings} ({started})")
        exit_code = 0
        try:
            while not self.stop_requested():
                result = self.run_pass()
                delay = self.plan_next(result)
                if self.options.once:
                    exit_code = 1 if result.failed else 0
                    break
                self.stop_event.wait(delay)
        finally:
            self.state["process"] = None
            self.save()
            self.log.write("watch", "exited", "stopped by a signal" if self.stop_requested() else "")
        return exit_code


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL if the watch dies (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _iso(timestamp: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")
