"""``habla-ls watch``: the command that runs the watch's loop (:mod:`habla_ls.watch`), one per work dir.

SIGTERM (or Ctrl-C) sets the loop's stop event: the running step completes, then the command exits 0
(``--once``: 1 when a step of the pass failed).
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from habla_ls.cli_finish import StopFlag
from habla_ls.config import ConfigError, Settings
from habla_ls.watch import Watcher
from habla_ls.watch_state import WatchOptions

LOCK_FILE = ".watch.lock"


@contextlib.contextmanager
def single_watch(home: Path) -> Iterator[None]:
    """One watch per work dir (released by the kernel however the process ends)."""
    path = Path(home) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise click.ClickException(f"a habla-ls watch already runs on {home}") from None
        yield


@click.command("watch")
@click.option("--once", is_flag=True, help="One pass, then exit (exit 1 if a step failed): for cron or a test.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between passes (default: the watch_interval setting, 60).")
@click.option("--min-corrections", type=click.IntRange(min=0), default=None,
              help="Corrections since the last training that start the finish (default: watch_min_corrections, 20).")
@click.option("--min-minutes", type=click.FloatRange(min=0), default=None,
              help="Or minutes of corrected audio (default: watch_min_minutes; 0 = off).")
@click.option("--train-config", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Training options file for the finish (as `habla-ls train --config`).")
@click.option("--force-promotion", is_flag=True,
              help="Promote every trained candidate even when the gate refuses (recorded as forced in its card and "
                   "the history). Only to try the loop with a model that cannot improve yet; never in real use.")
@click.pass_context
def watch_command(
    ctx: click.Context, once: bool, interval: float | None, min_corrections: int | None, min_minutes: float | None,
    train_config: Path | None, force_promotion: bool,
) -> None:
    """Push what Habla records, rank it, and retrain when enough has been corrected, by itself.

    \b
    Each pass (every --interval seconds):
      push     the sessions Habla has finished (live sessions wait until Habla stops them)
      predict  the served model's transcripts and the round's ranking, for new tasks
      count    human corrections since the last training (pulled from Label Studio)
      finish   when they reach the threshold: `habla-ls finish` (pull, train, evaluate, gate,
               export, promote, deliver), as a child process; its output goes to
               <home>/reports/finish.log

    Every step's outcome is one line in <home>/reports/watch.jsonl; `habla-ls status` shows the last
    pass and what comes next. A failing step is one line and is retried later, waiting twice as long
    each time (at most an hour). SIGTERM stops it after the current step (exit 0); after a kill -9 the
    next start carries on where it was.
    """
    settings: Settings = ctx.obj
    if settings.recordings is None:
        raise click.UsageError("no recordings dir: set HABLA_RECORDINGS (Habla's data/audio/recordings)")
    try:
        settings.require_api_key()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    config_file = ctx.find_root().params.get("config_file")
    options = WatchOptions.from_settings(
        settings, interval=interval, min_corrections=min_corrections, min_minutes=min_minutes,
        train_config=train_config.resolve() if train_config else None, once=once, force_promotion=force_promotion,
        config_file=Path(config_file).resolve() if config_file else None,
    )
    with single_watch(settings.home):
        watcher = Watcher(settings, options, echo=click.echo)
        stop = StopFlag.install(on_stop=lambda name: (
            watcher.stop_event.set(), click.echo(f"{name}: stopping after the current step", err=True)
        ))
        try:
            code = watcher.run()
        finally:
            stop.restore()
    sys.exit(code)
