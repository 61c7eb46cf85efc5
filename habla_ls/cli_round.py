"""``habla-ls round``: an active-learning round, or with ``--finish`` the end of one."""

from __future__ import annotations

from pathlib import Path

import click

from habla_ls.config import ConfigError, Settings


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from exc


@click.command("round")
@click.option("--budget", type=click.IntRange(min=1), default=None, help="Also put the top N into a Label Studio view and list them.")
@click.option(
    "--reference",
    default="parent",
    show_default=True,
    help="Model to measure disagreement against: 'parent' (the served version's parent), 'none', or a version name.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Clips per inference batch.")
@click.option(
    "--strategy",
    type=click.Choice(["diverse", "uncertainty", "random"]),
    default=None,
    help="How to order the tasks: 'diverse' (expected errors per second, times the distance in the model's "
    "encoder space to what is already corrected or picked), 'uncertainty' (expected errors per second, a fair "
    "share per session and speaker), 'random' (a baseline). Default: round_strategy (HABLA_LS_ROUND_STRATEGY), "
    "'diverse' unless set.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="With --strategy random: the shuffle's seed.")
@click.option("--view-title", default="habla-ls: correct next", show_default=True, help="Title of the Data Manager view.")
@click.option("--finish", is_flag=True, help="Instead of ranking: pull the corrections, train, evaluate and promote.")
@click.option(
    "--train-config",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="With --finish: training options file (as `habla-ls train --config`).",
)
@click.pass_context
def round_command(
    ctx: click.Context, budget: int | None, reference: str, batch_size: int, strategy: str | None, seed: int,
    view_title: str, finish: bool, train_config: str | None,
) -> None:
    """An active-learning round.

    Transcribes every task that has no human transcript with the served model, ranks the tasks by how
    many word errors a correction would fix per second of listening (low confidence, disagreement with
    the reference model), weighed by the --strategy (by default, how unlike each clip sounds to what is
    already corrected or picked, so ten repeats of one routine are not all asked for), stores the
    predictions and a `priority` (1 = first) in each task, and with --budget makes a view of the top N.
    Sort the Data Manager by `priority` to correct the most useful tasks first.

    After the humans have corrected, `habla-ls round --finish` (or `habla-ls finish`) pulls, trains,
    evaluates, and exports, promotes and delivers a version the gate accepts.
    """
    settings: Settings = ctx.obj
    if finish:
        from habla_ls.workflow import finish_round

        try:
            train_params = {"options_file": Path(train_config)} if train_config else {}
            for line in finish_round(ctx, **train_params):
                click.echo(line)
        except (ConfigError, RuntimeError, LookupError, ValueError) as exc:
            _fail(exc)
        return

    from habla_ls.round import run_round
    from ml_backend.engine import EngineError
    from ml_backend.registry import RegistryError
    from sync.ls_errors import LabelStudioError

    try:
        summary = run_round(
            settings, budget=budget, reference=reference, batch_size=batch_size, view_title=view_title,
            strategy=strategy or settings.round_strategy, seed=seed,
        )
    except (ConfigError, RegistryError, EngineError, LabelStudioError) as exc:
        _fail(exc)
    for line in summary.lines():
        click.echo(line)
    for line in summary.unusable:
        click.echo(f"warning: {line}", err=True)
