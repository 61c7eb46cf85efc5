"""``habla-ls status``: the counts, the served version and its WERs, the prefill, and the loop (the watch
and the finish), from what :mod:`habla_ls.status` collects."""

from __future__ import annotations

import json

import click

from habla_ls.cli_models import format_size
from habla_ls.config import ConfigError, Settings
from habla_ls.learning_curve import PLOT_FILE, from_dicts, plot
from habla_ls.learning_curve import lines as curve_lines
from habla_ls.prefill import describe, refresh
from habla_ls.status import collect_status, describe_loop
from habla_ls.word_marks import WordChecks
from sync.ls_errors import LabelStudioError


def _fail(exc: Exception) -> None:
    raise click.ClickException(str(exc)) from exc


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--refresh-prefill",
    is_flag=True,
    help="Ask Label Studio now: recompute each source's WER on the corrected tasks and set the prefill.",
)
@click.pass_obj
def status_command(settings: Settings, as_json: bool, refresh_prefill: bool) -> None:
    """Segments archived / pushed / annotated, the served model version and its last WERs, the learning
    curve (each version's WER by corrections, also as reports/learning-curve.png), which transcript
    prefills the labelling page (each source's WER on the human-corrected tasks), and the page's word
    checks (each version's share of wrong words marked against all words marked, and the calibration)."""
    if refresh_prefill:
        try:
            refresh(settings)
        except (ConfigError, LabelStudioError) as exc:
            _fail(exc)
    status = collect_status(settings)
    if as_json:
        click.echo(json.dumps(status, indent=2, ensure_ascii=False))
        return
    click.echo(f"work dir:      {status['home']}")
    counts = status["counts"]
    click.echo(f"segments:      {counts['archived']} archived, {counts['pushed']} pushed, {counts['annotated']} annotated")
    click.echo(f"served model:  {status['served_version'] or 'none (run `habla-ls models bootstrap`)'}")
    for version in status["versions"]:
        mark = "*" if version["version"] == status["served_version"] else " "
        click.echo(
            f" {mark} {version['version']:<28} test WER {_fmt(version.get('test_wer_normalised'))} "
            f"(raw {_fmt(version.get('test_wer_raw'))}), standard-speech WER {_fmt(version.get('regression_wer'))}"
            + (" (weights pruned)" if version.get("pruned") else "")
        )
    prunable = status["prunable"]
    if prunable["versions"]:
        click.echo(f"  {len(prunable['versions'])} refused version(s) hold {format_size(prunable['bytes'])} of weights that "
                   "nothing needs: `habla-ls models prune` frees them, keeping their cards")
    points = from_dicts(status["learning_curve"])  # the curve collect_status built: not built a second time
    plot(points, settings.reports_dir / PLOT_FILE)
    for line in curve_lines(points):
        click.echo(line)
    for line in describe(settings):
        click.echo(line)
    checks = WordChecks.from_dict(status["word_checks"]) if status["word_checks"] else None
    if checks is not None:
        lines = checks.lines()
    elif status["word_checks_problem"]:
        lines = [f"word checks: not shown: {status['word_checks_problem']}"]
    else:
        lines = ["word checks: not measured yet (a round measures them)"]
    for line in lines:
        click.echo(line)
    # Not with --json, whose output already holds the same data.
    for line in describe_loop(status):
        click.echo(line)


def _fmt(value: float | None) -> str:
    return "  -  " if value is None else f"{value:.3f}"
