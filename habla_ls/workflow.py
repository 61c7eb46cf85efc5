"""``habla-ls round --finish``: the shared finish (:mod:`habla_ls.finish`), printed as it goes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click

from habla_ls.cli_finish import echo_step
from habla_ls.finish import run_finish
from habla_ls.finish_result import FinishOptions


def finish_round(ctx: click.Context, options_file: Path | None = None) -> Iterator[str]:
    """Runs the finish, echoing each step as it ends; yields the closing lines. A failing step raises
    ``click.ClickException`` with its one line; a refused promotion is an answer, not a failure."""
    result = run_finish(ctx.obj, FinishOptions(train_config=options_file), on_step=echo_step)
    if result.failed:
        raise click.ClickException(result.lines()[0])
    yield from result.lines()
