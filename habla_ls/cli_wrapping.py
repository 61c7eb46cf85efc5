"""A click group that hands its commands over to another group, wrapping some of them on the way.

How habla_ls adds Label Studio steps to commands whose packages must not import ``sync``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


class WrappingGroup(click.Group):
    """Delegates to another (lazy) group and wraps some of its commands (``name -> wrapper``)."""

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
