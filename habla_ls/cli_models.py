"""``habla-ls models ...`` as the user runs it: training's model commands, plus Label Studio's prefill.

``training`` does not import ``sync``, so the registry commands themselves know nothing of Label
Studio. This group hands every command over to :data:`training.cli_models.models_group` unchanged,
except that ``promote`` and ``rollback``, once the served version has changed, give the unlabelled tasks
predictions of the new version and let :mod:`habla_ls.prefill` choose what prefills the labelling page.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import click

from training.cli_models import models_group as registry_group

SERVING_COMMANDS = ("promote", "rollback")


def after_serving_change(settings: Any, predict: bool) -> None:
    """Label Studio follows the served version; problems there are reported in one line, never fatal."""
    from habla_ls.prefill import after_serving_change as follow

    follow(settings, predict=predict, echo=click.echo)


def with_prefill(command: click.Command) -> click.Command:
    """A copy of ``command`` that runs :func:`after_serving_change` when it succeeds."""
    wrapped = copy.copy(command)
    wrapped.params = [
        *command.params,
        click.Option(
            ["--predict/--no-predict"],
            default=True,
            show_default=True,
            help="Then transcribe, with the served version, the unlabelled tasks that have no prediction of it "
            "(reused from the prediction cache where it has them), so every task opens prefilled by it.",
        ),
    ]
    original = command.callback
    assert original is not None

    @functools.wraps(original)
    def callback(*args: Any, predict: bool = True, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        after_serving_change(click.get_current_context().obj, predict)
        return result

    wrapped.callback = callback
    return wrapped


class WrappingGroup(click.Group):
    """Delegates to another (lazy) group and wraps some of its commands (``name -> wrapper``).

    How habla_ls adds Label Studio steps to commands whose packages must not import ``sync``.
    """

    def __init__(self, inner: click.Group, wrappers: dict[str, Callable[[click.Command], click.Command]], **kwargs: Any):
        super().__init__(name=inner.name, help=inner.help, short_help=inner.short_help, **kwargs)
        self.inner = inner
        self.wrappers = wrappers

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self.inner.list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = self.inner.get_command(ctx, cmd_name)
        if command is not None and cmd_name in self.wrappers:
            return self.wrappers[cmd_name](command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.inner.format_commands(ctx, formatter)


models_group = WrappingGroup(registry_group, {name: with_prefill for name in SERVING_COMMANDS})
