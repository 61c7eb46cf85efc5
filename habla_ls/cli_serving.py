"""``habla-ls models promote`` and ``models rollback``: switch the served version, then follow it in Label Studio.

Once the served version has changed (and for ``promote`` also when it already was served), the
unlabelled tasks get predictions of the new version and :mod:`habla_ls.prefill` chooses what prefills
the labelling page; problems there are reported in one line, never fatal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from habla_ls.config import Settings
from training.gate import (
    DEFAULT_MARGIN,
    DEFAULT_MIN_SLICE_WORDS,
    DEFAULT_REGRESSION_FLOOR,
    DEFAULT_REGRESSION_TOLERANCE,
)
from training.wer_bootstrap import DEFAULT_CONFIDENCE, DEFAULT_RESAMPLES


def predict_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--predict/--no-predict`` flag of the commands that change the served version."""
    return click.option(
        "--predict/--no-predict",
        default=True,
        show_default=True,
        help="Then transcribe, with the served version, the unlabelled tasks that have no prediction of it "
        "(reused from the prediction cache where it has them), so every task opens prefilled by it.",
    )(command)


def after_serving_change(settings: Settings, predict: bool) -> None:
    """Label Studio follows the served version; problems there are reported in one line, never fatal."""
    from habla_ls.serving_change import after_serving_change as follow

    follow(settings, predict=predict, echo=click.echo)


@click.command("promote")
@click.argument("version")
@click.option("--force", is_flag=True, help="Serve it even if the gate refuses (the failed conditions are recorded in the history and card).")
@click.option("--margin", type=float, default=DEFAULT_MARGIN, show_default=True,
              help="Relative test-WER improvement required (point estimate below -margin x current WER).")
@click.option("--regression-tolerance", type=float, default=DEFAULT_REGRESSION_TOLERANCE, show_default=True,
              help="Relative worsening allowed on each regression slice.")
@click.option("--regression-floor", type=float, default=DEFAULT_REGRESSION_FLOOR, show_default=True,
              help="Absolute WER worsening always allowed on a regression slice (a few words on a low WER are noise).")
@click.option("--confidence", type=click.FloatRange(0.5, 0.999), default=DEFAULT_CONFIDENCE, show_default=True,
              help="Level of the bootstrap intervals.")
@click.option("--min-slice-words", type=click.IntRange(min=1), default=DEFAULT_MIN_SLICE_WORDS, show_default=True,
              help="Regression slices with fewer reference words are reported but not decided.")
@click.option("--resamples", type=click.IntRange(min=100), default=DEFAULT_RESAMPLES, show_default=True,
              help="Bootstrap resamples.")
@click.option("--regression-manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Standard-speech regression set to judge on (default: the regression_manifest setting, else the generated set).")
@click.option("--evaluate/--no-evaluate", "run_evaluate", default=True, show_default=True,
              help="Evaluate both versions on the same clips first when their reports do not compare.")
@predict_option
@click.pass_obj
def promote_command(
    settings: Settings, version: str, force: bool, margin: float, regression_tolerance: float, regression_floor: float,
    confidence: float, min_slice_words: int, resamples: int, regression_manifest: Path | None, run_evaluate: bool,
    predict: bool,
) -> None:
    """Serve VERSION if it is credibly better on the test split and keeps standard speech.

    \b
    Both versions are compared utterance by utterance on the same clips; a paired
    bootstrap over sessions (test split) or speakers (regression set) gives an interval
    of each WER difference, candidate - current (utterances are resampled when there
    are fewer than 8 sessions/speakers). VERSION is promoted only when
      1. test: the difference is below -margin x current WER and its interval's upper
         bound is below 0 (a credible improvement), and
      2. regression: no slice (overall, each voice family, each voice/speaker, quiet
         speech) is worse by more than max(tolerance x its WER, floor) with its
         interval's lower bound above 0. Slices under --min-slice-words reference
         words are reported, not decided (overall always is).

    Every failed condition is printed on its own line; the slice table goes to
    <home>/reports/gate-VERSION-vs-CURRENT.md. The backend picks the new CURRENT up
    on its next request; `habla-ls models rollback` undoes it.
    """
    from ml_backend.registry import RegistryError
    from training.gate import GateOptions
    from training.paired_sets import ESPEAK_ONLY_NOTE
    from training.promotion import decide, expected_set_ids, promote, write_decision

    models_dir = settings.models_dir
    regression_manifest = regression_manifest or settings.regression_manifest
    options = GateOptions(
        margin=margin, regression_tolerance=regression_tolerance, regression_floor=regression_floor,
        confidence=confidence, min_slice_words=min_slice_words, resamples=resamples,
    )
    gate_args = {"options": options, "reports_dir": settings.reports_dir, "expected_set_ids": expected_set_ids(regression_manifest)}
    try:
        decision = decide(models_dir, version, **gate_args)
        if run_evaluate and decision.needs_evaluation and decision.current not in (None, version):
            from training.evaluate import EvaluateError, evaluate

            click.echo(f"evaluating {version} and {decision.current} on the same clips first ...")
            try:
                # The gate needs both versions' figures from the same clips.
                evaluate(settings.home, [version, decision.current], regression_manifest=regression_manifest)
            except EvaluateError as exc:
                raise click.ClickException(str(exc)) from exc
        decision = promote(models_dir, version, force=force, **gate_args)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    report = write_decision(decision, settings.reports_dir)
    if ESPEAK_ONLY_NOTE in decision.notes:
        click.echo(ESPEAK_ONLY_NOTE)
    for reason in decision.reasons:
        click.echo(f"  {reason}")
    if report is not None:
        click.echo(f"slice table: {report}")
    if decision.current == version:
        click.echo(f"{version} is already served")
    elif decision.passed:
        click.echo(f"promoted {version} (was {decision.current or 'nothing'})")
    elif force:
        click.echo(f"promoted {version} with --force despite the gate (was {decision.current})")
    else:
        failed = len(decision.failures) or len(decision.reasons)
        raise click.ClickException(f"{version} not promoted: the gate refused it ({failed} failed) — use --force to override")
    after_serving_change(settings, predict)


@click.command("rollback")
@predict_option
@click.pass_obj
def rollback_command(settings: Settings, predict: bool) -> None:
    """Serve again the version that was served before the current one."""
    from ml_backend.registry import RegistryError, read_current
    from training.registry import rollback

    try:
        previous = read_current(settings.models_dir)
        now = rollback(settings.models_dir)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rolled back: {previous} -> {now}")
    after_serving_change(settings, predict)
