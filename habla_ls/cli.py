"""The ``habla-ls`` console script.

Sub-commands live in the package that owns them and are imported only when called, so that
``habla-ls --help`` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from habla_ls import __version__
from habla_ls.config import ConfigError, load_settings


class LazyGroup(click.Group):
    """A click group whose commands are ``"module:attribute"`` strings, imported on first use.

    ``lazy_commands`` maps a name to ``"module:attr"`` or to ``("module:attr", "short help")``; with the
    short help given, ``--help`` lists the command without importing it (and so without torch).
    """

    def __init__(self, *args, lazy_commands: dict[str, str | tuple[str, str]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_commands = {
            name: target if isinstance(target, tuple) else (target, "")
            for name, target in (lazy_commands or {}).items()
        }

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy_commands and self.lazy_commands[name][1]:
                rows.append((name, self.lazy_commands[name][1]))
            else:
                command = self.get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands:
            module_name, attr = self.lazy_commands[cmd_name][0].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy_commands={
        "sync": ("habla_ls.cli_sync:sync_group", "Push Habla segments to Label Studio; pull corrections back."),
        "labelstudio": ("habla_ls.cli_sync:labelstudio_group", "Run a local Label Studio server."),
        "backend": ("habla_ls.cli_backend:backend_group", "Serve the current model to Label Studio as an ML backend."),
        "models": ("habla_ls.cli_models:models_group", "Model versions: bootstrap, import, list, promote, roll back, export."),
        "train": ("habla_ls.cli_train:train_command", "Fine-tune Whisper (LoRA or full) on the pulled corrections."),
        "evaluate": ("habla_ls.cli_evaluate:evaluate_command", "WER/CER of model versions on the fixed test split."),
        "round": ("habla_ls.cli_round:round_command", "An active-learning round: predict, rank, queue the next tasks."),
        "finish": ("habla_ls.cli_finish:finish_command", "Pull, train, evaluate, gate, export, promote, deliver: one job."),
        "watch": ("habla_ls.cli_watch:watch_command", "Run the loop by itself: push, rank, and finish when enough is corrected."),
        "status": ("habla_ls.cli_status:status_command", "Segments archived/pushed/annotated, served version, last WERs, the watch."),
        "demo": ("habla_ls.demo:demo_command", "The whole loop on bundled sample recordings (offline)."),
    },
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="A habla-ls.toml file (default: $HABLA_LS_CONFIG, else ./habla-ls.toml if present).",
)
@click.option("--home", type=click.Path(file_okay=False), default=None, help="Work dir (default $HABLA_LS_HOME or ./habla-ls-data).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(__version__, prog_name="habla-ls")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, home: str | None, verbose: int) -> None:
    """Turn Habla classroom recordings into a better Spanish Whisper, through Label Studio.

    \b
    Typical loop:
      habla-ls labelstudio up          # a local Label Studio (or point LABEL_STUDIO_URL at yours)
      habla-ls models bootstrap        # the offline whisper-base as the first model version
      habla-ls sync push               # Habla segments -> Label Studio tasks with prefilled text
      habla-ls backend serve &         # the served model's transcripts prefill the page
      habla-ls round --budget 50       # choose what a human should correct next
      ... correct in Label Studio ...
      habla-ls finish                  # pull, train, evaluate, gate, export, promote, deliver

    Or all of it by itself, week after week: habla-ls watch. Try it offline first: habla-ls demo.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    try:
        ctx.obj = load_settings(config_file, home=home)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def main() -> None:
    try:
        cli(prog_name="habla-ls")
    except ConfigError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
