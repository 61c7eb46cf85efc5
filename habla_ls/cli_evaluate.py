"""``habla-ls evaluate``: WER/CER of one or more versions on the fixed test split and the regression set."""

from __future__ import annotations

from pathlib import Path

import click

from habla_ls.config import Settings


@click.command("evaluate")
@click.argument("versions", nargs=-1)
@click.option("--manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Score these rows instead of the test split of the pull manifest.")
@click.option("--regression-manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Standard-speech regression set (default: the regression_manifest setting, else the generated set "
                   "in <home>/datasets/regression).")
@click.option("--no-regression", is_flag=True, help="Skip the regression set.")
@click.option("--beam-size", type=int, default=5, show_default=True, help="As the backend decodes.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.pass_obj
def evaluate_command(settings: Settings, versions: tuple[str, ...], manifest: Path | None, regression_manifest: Path | None,
                     no_regression: bool, beam_size: int, device: str) -> None:
    """Score VERSIONS (default: the served one) with the serving engine; compare them if several.

    Writes <home>/reports/<version>.json (every utterance with its error counts), .md (WER per slice
    with bootstrap intervals) and .png, and compare-A-vs-B.* for two or more (with the promotion gate's
    slice table for two; the served version is the reference). The model cards record the figures
    and the report path, where `habla-ls models promote` reads them.
    """
    from training.evaluate import EvaluateError, evaluate
    from training.paired_sets import report_notes

    regression_manifest = regression_manifest or settings.regression_manifest
    try:
        evaluations = evaluate(
            settings.home, versions, manifest=manifest, regression_manifest=regression_manifest,
            include_regression=not no_regression, beam_size=beam_size, device=device,
        )
    except EvaluateError as exc:
        raise click.ClickException(str(exc)) from exc
    for note in report_notes(evaluations[0].to_dict()) if evaluations else []:
        click.echo(note)
    click.echo(f"{'version':<28}{'test WER':>10}{'(raw)':>9}{'(no accents)':>13}{'regr WER':>10}")
    for e in evaluations:
        test = e.reports.get("test")
        cells = [f"{test.levels[lv].wer:.4f}" if test else "-" for lv in ("normalised", "raw", "accent_insensitive")]
        reg = f"{e.regression_wer:.4f}" if e.regression_wer is not None else "-"
        click.echo(f"{e.version:<28}{cells[0]:>10}{cells[1]:>9}{cells[2]:>13}{reg:>10}")
    click.echo(f"reports in {settings.reports_dir}")
