"""``habla-ls round --finish``: pull, train, evaluate, promote — the same commands a user would run.

Each step is the command itself (invoked in this process with its defaults), so the round does exactly
what the documented commands do, and a failure names the step.
"""

from __future__ import annotations

from collections.abc import Iterator

import click

from ml_backend.registry import list_versions, read_current

STEPS = (("sync", "pull"), ("train",), ("evaluate",), ("models", "promote"))


def _command(ctx: click.Context, path: tuple[str, ...]) -> click.Command:
    group = ctx.find_root().command
    command: click.Command | None = group
    for name in path:
        assert isinstance(command, click.Group)
        command = command.get_command(ctx, name)
        if command is None:
            raise click.ClickException(f"internal: no command {' '.join(path)}")
    return command


def finish_round(ctx: click.Context, **train_params) -> Iterator[str]:
    settings = ctx.obj
    models_dir = settings.models_dir
    served = read_current(models_dir)

    yield "== habla-ls sync pull"
    ctx.invoke(_command(ctx, ("sync", "pull")))

    yield "== habla-ls train"
    before = set(list_versions(models_dir))
    ctx.invoke(_command(ctx, ("train",)), **train_params)
    new = sorted(set(list_versions(models_dir)) - before)
    if not new:
        raise click.ClickException("training registered no new version; nothing to evaluate")
    candidate = new[-1]

    yield f"== habla-ls evaluate {candidate} {served or ''}".rstrip()
    ctx.invoke(_command(ctx, ("evaluate",)), versions=tuple(v for v in (candidate, served) if v))

    yield f"== habla-ls models promote {candidate}"
    try:
        ctx.invoke(_command(ctx, ("models", "promote")), version=candidate)
    except click.ClickException as exc:
        # A refused promotion is an answer, not a failure of the round.
        yield f"not promoted: {exc.format_message()}"
    yield f"served model: {read_current(models_dir)}"
