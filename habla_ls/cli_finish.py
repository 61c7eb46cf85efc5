"""``habla-ls finish``: the finish (:mod:`habla_ls.finish`) as a command, its steps printed as they end,
and what the watch's command shares with it: the JSON-lines step log and the stop flag that SIGTERM and
Ctrl-C set (a long job stops between steps, never in the middle of one).

Exit codes: 0 for an answer (promoted, refused, up to date, stopped), 1 for a failing step, 75 when
another training job holds the work dir's lock and ``--no-wait`` was given.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from habla_ls.config import Settings
from habla_ls.finish import run_finish
from habla_ls.finish_journal import append_jsonl
from habla_ls.finish_result import BUSY, FAILED, STARTED, FinishOptions, StepRecord


def format_step(record: StepRecord) -> str:
    took = f" ({record.duration:.1f} s)" if record.duration else ""
    detail = f": {record.detail}" if record.detail else ""
    return f"{record.step:<9}{record.outcome}{detail}{took}"


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
      train     fine-tune the served version's root model on every correction (nothing new: stop here)
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
        raise click.ClickException(result.lines()[0])
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
