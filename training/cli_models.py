"""``habla-ls models ...``: the model registry from the command line."""

from __future__ import annotations

import click

from habla_ls.cli import LazyGroup


@click.group(
    cls=LazyGroup,
    lazy_commands={
        "import-ct2": ("training.ct2_import:import_ct2_command", "Convert a CTranslate2 Whisper dir and register it."),
        "bootstrap": ("training.ct2_import:bootstrap_command", "Register the packaged offline whisper-base as the first version."),
        "list": ("training.promotion:list_command", "List model versions with their WERs; mark the served one."),
        "promote": ("training.promotion:promote_command", "Serve a version if credibly better and no standard-speech slice worse (--force overrides)."),
        "rollback": ("training.promotion:rollback_command", "Serve the version that was served before the current one."),
        "export": ("training.export:export_command", "Merge LoRA and export a version to CTranslate2 for Habla."),
    },
)
def models_group() -> None:
    """Model versions: import, bootstrap the offline default, list, promote, roll back, export."""
