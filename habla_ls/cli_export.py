"""``habla-ls models export``: a version merged and converted to CTranslate2, checked, and delivered to Habla."""

from __future__ import annotations

from pathlib import Path

import click

from habla_ls.config import Settings
from ml_backend.registry import RegistryError, read_current
from training import deliver as delivery
from training.ct2_convert import QUANTIZATIONS, ExportError
from training.export import ExportResult, export_version
from training.export_check import DEFAULT_TOLERANCE, INT8_TOLERANCE, SERVED_BEAM_SIZE


@click.command("export")
@click.argument("version", required=False)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write the exports here instead of into the version dir.")
@click.option("--quantization", "quantizations", multiple=True, type=click.Choice(["int8", "float16", "int8_float16", "float32"]),
              help="CTranslate2 weight types (repeatable). Default: int8 and float16.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Transcribe the test split (topped up with regression clips) with transformers and with each "
                   "export, from the same log-mel features and with the same greedy decoding, and each int8 export "
                   "against a float one as the backend serves them (beam 5); refuse the export if a WER differs by "
                   "more than the tolerance.")
@click.option("--check-clips", type=int, default=40, show_default=True, help="At most this many clips in the check.")
@click.option("--tolerance", type=float, default=DEFAULT_TOLERANCE, show_default=True,
              help="Allowed absolute WER difference for float32/float16 exports.")
@click.option("--int8-tolerance", type=float, default=INT8_TOLERANCE, show_default=True,
              help="How much worse (absolute WER) an int8 export may be, as served (beam 5), than a float export; "
              "refused only when credibly worse (bootstrap over the check clips).")
@click.option("--habla-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Deliver the version's int8 export here for Habla (default: the habla_model_dir setting, "
                   "$HABLA_LS_HABLA_MODEL_DIR). An existing export is delivered as it is.")
@click.option("--habla-env", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Habla's .env (habla/.env in its checkout): its WHISPER_MODEL line is set, other lines kept "
                   "(default: $HABLA_LS_HABLA_ENV_FILE).")
@click.option("--habla-path", default=None,
              help="The delivery dir as Habla sees it, if not the same path (a container mount, C:/...; "
                   "default: $HABLA_LS_HABLA_PATH).")
@click.option("--rollback", is_flag=True, help="Deliver again the version delivered before the current one.")
@click.pass_obj
def export_command(settings: Settings, version: str | None, out_dir: Path | None, quantizations: tuple[str, ...],
                   check: bool, check_clips: int, tolerance: float, int8_tolerance: float, habla_dir: Path | None,
                   habla_env: Path | None, habla_path: str | None, rollback: bool) -> None:
    """Merge LoRA and export VERSION (default: the served one) to CTranslate2 for Habla, and deliver it.

    \b
    Habla loads the result directly:
      WHISPER_MODEL=<home>/models/<version>/ct2 ./habla      (int8, CPU)
      WHISPER_MODEL=<home>/models/<version>/ct2-float16 ...   (GPU)
    \b
    With --habla-dir DIR (or the habla_model_dir setting) the int8 export is copied to DIR/<version>
    atomically, the version delivered before is kept, and WHISPER_MODEL=DIR/<version> is written to
    DIR/whisper_model.env and to --habla-env. Habla loads it at its next start. --rollback swaps back.
    """
    if out_dir is not None and habla_dir is not None:
        raise click.UsageError("--out and --habla-dir do not go together: delivery takes the version's own export")
    habla_dir = habla_dir or (None if out_dir is not None else settings.habla_model_dir)
    habla_env = habla_env or settings.habla_env_file
    habla_path = habla_path or settings.habla_model_path
    if rollback:
        if habla_dir is None or version:
            raise click.UsageError("--rollback takes no VERSION and needs --habla-dir (or the habla_model_dir setting)")
        try:
            done = delivery.rollback(habla_dir, env_file=habla_env, habla_path=habla_path)
        except delivery.DeliveryError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"rolled back: {done.previous} -> {done.version} in {habla_dir}")
        _echo_lines(done)
        return
    version = version or read_current(settings.models_dir)
    if version is None:
        raise click.ClickException(f"no version given and nothing served in {settings.models_dir}")
    result = None
    exported = _existing_int8_export(settings.models_dir, version) if habla_dir is not None else None
    if exported is not None:
        click.echo(f"    int8: {exported} (existing export)")
    else:
        try:
            result = export_version(settings.home, version, quantizations=quantizations or QUANTIZATIONS,
                                    out_dir=out_dir, check=check, check_limit=check_clips, tolerance=tolerance,
                                    int8_tolerance=int8_tolerance)
        except (ExportError, RegistryError) as exc:
            raise click.ClickException(str(exc)) from exc
        _echo_export(result)
    if habla_dir is None:
        assert result is not None
        click.echo(f"Habla: WHISPER_MODEL={result.outputs.get('int8') or next(iter(result.outputs.values()))}")
        return
    try:
        done = delivery.deliver(settings.models_dir, version, habla_dir, env_file=habla_env, habla_path=habla_path)
    except delivery.DeliveryError as exc:
        raise click.ClickException(str(exc)) from exc
    if not done.changed:
        click.echo(f"{version} is already delivered in {done.path}; nothing changed")
        return
    kept = f" ({done.previous} kept: `habla-ls models export --rollback`)" if done.previous else ""
    click.echo(f"delivered {version} to {done.path}{kept}")
    _echo_lines(done)


def _existing_int8_export(models_dir: Path, version: str) -> Path | None:
    try:
        return delivery.delivery_source(models_dir, version, "int8")
    except delivery.DeliveryError:
        return None


def _echo_lines(done: delivery.Delivery) -> None:
    files = ", ".join(str(p) for p in done.env_files)
    click.echo(f"Habla: WHISPER_MODEL={done.whisper_model} in {files}; restart Habla to load it")


def _echo_export(result: ExportResult) -> None:
    for quantization, path in result.outputs.items():
        click.echo(f"{quantization:>8}: {path}")
    if result.check:
        check_result = result.check
        ct2 = ", ".join(
            f"{q} {w:.4f} ({check_result.differing[q]:.0%} of clips differ)" for q, w in check_result.wer_ct2.items()
        )
        click.echo(f"check on {check_result.clips} clips: WER transformers {check_result.wer_transformers:.4f}, "
                   f"CTranslate2 {ct2} (greedy, same features)")
        if check_result.wer_served:
            served = ", ".join(f"{q} {w:.4f}" for q, w in check_result.wer_served.items())
            click.echo(f"as served (beam {SERVED_BEAM_SIZE}): float {check_result.wer_served_float:.4f}, {served}")
