"""The promotion gate on the registry both ways, and the models list/promote/rollback commands.

Each registered version's card points at a per-utterance report (``eval_report``), as ``habla-ls
evaluate`` writes them; the reports here are synthetic (decoding is not the point: see test_evaluate).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from ml_backend.registry import read_card, read_current
from tests.test_gate import make_test_split, regression_set, report
from training import registry
from training.promotion import check_gate, promote

VOICES = ("kokoro:jf_nezumi", "kokoro:jm_kumo", "espeak:es-419", "espeak:es+m3")
RNG = np.random.default_rng(11)
# 10 sessions x 6 clips x 10 words, and 4 voices x 40 clips x 10 words
BASE_TEST = RNG.binomial(10, 0.40, size=(10, 6))
BASE_REGRESSION = {v: RNG.binomial(10, 0.06, size=40) for v in VOICES}


def _test(change: int = 0, every: int = 1) -> list[dict]:
    """The base test split with ``change`` errors added to every ``every``-th clip (kept within 0..10)."""
    flat = BASE_TEST.flatten()
    changed = [min(10, max(0, e + change)) if i % every == 0 else e for i, e in enumerate(flat)]
    return make_test_split(np.array(changed).reshape(BASE_TEST.shape).tolist())


def _regression(voice: str | None = None, extra: int = 0) -> list[dict]:
    """The base regression set with one more error on the first ``extra`` clips of ``voice``."""
    return regression_set({v: [int(e) + (v == voice and i < extra) for i, e in enumerate(errors)] for v, errors in BASE_REGRESSION.items()})


def _card(reports_dir: Path, version: str, test: list[dict] | None, regression: list[dict] | None, **set_ids) -> dict:
    data = report(version, test or [], regression or [], **set_ids)
    for name, records in (("test", test), ("regression", regression)):
        if records is None:
            del data["sets"][name]
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / f"{version}.json"
    path.write_text(json.dumps(data))
    return {"version": version, "eval_report": str(path)}


def _register(models_dir: Path, name: str, test: list[dict] | None, regression: list[dict] | None, **set_ids) -> str:
    version = registry.next_version(models_dir, name)
    card = _card(models_dir.parent / "reports", version, test, regression, **set_ids)
    with registry.new_version(models_dir, name) as (registered, staging):
        assert registered == version
        (staging / "hf").mkdir()
        registry.write_card(staging, {"name": name, **card})
    return version


@pytest.mark.parametrize(
    ("test", "regression", "set_ids", "passed", "reason_part"),
    [
        (_test(-2), _regression(), {}, True, "credibly better"),  # 0.40 -> ~0.21 on every session
        (_test(-1, every=60), _regression(), {}, False, "not better by the 2% margin"),  # one error fewer in 600 words
        (_test(-2), _regression("kokoro:jm_kumo", extra=40), {}, False, "regression voice kokoro:jm_kumo"),  # +0.1 there
        (_test(-2), _regression("kokoro:jm_kumo", extra=2), {}, True, "judged slices within their limits"),  # +0.005: tolerated
        (_test(-2), _regression(), {"test_id": "t2"}, False, "different test splits"),
        (None, _regression(), {}, False, "no test figures for c"),
        (_test(-2), None, {}, False, "no regression figures for c"),
    ],
)
def test_gate_both_ways(tmp_path: Path, test, regression, set_ids: dict, passed: bool, reason_part: str) -> None:
    current = _card(tmp_path, "cur", _test(), _regression())
    decision = check_gate(_card(tmp_path, "c", test, regression, **set_ids), current)
    assert decision.passed is passed
    assert any(reason_part in r for r in decision.reasons), decision.reasons


def test_gate_passes_when_nothing_is_served(tmp_path: Path) -> None:
    assert check_gate({"version": "c"}, None).passed


def test_gate_without_a_report_asks_for_an_evaluation(tmp_path: Path) -> None:
    decision = check_gate({"version": "c", "test_wer_normalised": 0.1}, _card(tmp_path, "cur", _test(), _regression()))
    assert not decision.passed and decision.needs_evaluation
    assert "no per-utterance evaluation report for c: run `habla-ls evaluate c cur`" in decision.reasons


def test_reports_are_found_again_after_the_home_moved(tmp_path: Path) -> None:
    old, moved = tmp_path / "old" / "reports", tmp_path / "new" / "reports"
    candidate, current = _card(old, "c", _test(-2), _regression()), _card(old, "cur", _test(), _regression())
    moved.parent.mkdir()
    old.rename(moved)
    assert not check_gate(candidate, current).passed
    assert check_gate(candidate, current, reports_dir=moved).passed


def test_promote_switches_current_only_when_the_gate_passes(tmp_path: Path) -> None:
    models = tmp_path / "models"
    base = _register(models, "base", _test(), _regression())
    registry.set_current(models, base)
    worse = _register(models, "ft", _test(-1, every=60), _regression())
    better = _register(models, "ft", _test(-2), _regression())

    assert not promote(models, worse).passed
    assert read_current(models) == base
    decision = promote(models, better)
    assert decision.passed
    assert read_current(models) == better
    assert registry.history(models)[-1]["previous"] == base
    card = read_card(models / better)
    assert card["promoted"] and card["gate"]["passed"] and card["baseline_version"] == base
    assert card["baseline_wer"] == pytest.approx(BASE_TEST.sum() / 600)

    # --force: served despite the gate, the overridden conditions recorded in the history and the card
    forced = promote(models, worse, force=True)
    assert not forced.passed and read_current(models) == worse
    reason = registry.history(models)[-1]["reason"]
    assert reason.startswith("promote --force: test: WER") and "not better by the 2% margin" in reason
    gate = read_card(models / worse)["gate"]
    assert gate["forced"] and gate["against"] == better and gate["reasons"] == forced.reasons
    assert [c["name"] for c in gate["conditions"] if not c["passed"]] == ["test"]


def test_models_cli_list_promote_rollback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    models = home / "models"
    base = _register(models, "base", _test(), _regression())
    registry.update_card(models, base, test_wer_normalised=0.40, regression_wer=0.06)
    registry.set_current(models, base)
    # better on the test split, worse on ONE regression voice (and so on its family)
    bad = _register(models, "ft", _test(-2), _regression("kokoro:jm_kumo", extra=7))
    good = _register(models, "ft", _test(-2), _regression())
    registry.update_card(models, good, test_wer_normalised=0.30, regression_wer=0.06)
    runner = CliRunner()
    args = ["--home", str(home), "models"]

    refused = runner.invoke(cli, [*args, "promote", bad, "--no-evaluate"])
    assert refused.exit_code != 0
    lines = refused.output.splitlines()
    failed = [line.strip() for line in lines if "worse beyond the limit" in line]
    assert [line.split(": WER")[0] for line in failed] == ["regression family kokoro", "regression voice kokoro:jm_kumo"]
    assert failed[1].startswith("regression voice kokoro:jm_kumo: WER ") and "95 % CI +" in failed[1]
    assert not any(line.strip().startswith("test:") for line in lines)  # the test condition passed: not a failure line
    assert "not promoted" in refused.output and "2 failed" in refused.output
    assert read_current(models) == base
    table = (home / "reports" / f"gate-{bad}-vs-{base}.md").read_text()
    assert "| regression voice kokoro:jm_kumo | 40 | 400 |" in table and "**worse**" in table

    accepted = runner.invoke(cli, [*args, "promote", good, "--no-evaluate"])
    assert accepted.exit_code == 0, accepted.output
    assert f"promoted {good}" in accepted.output and "credibly better" in accepted.output

    listed = runner.invoke(cli, [*args, "list"])
    assert listed.exit_code == 0
    served = [line for line in listed.output.splitlines() if line.startswith("*")]
    assert len(served) == 1 and good in served[0] and "0.3000" in served[0]

    back = runner.invoke(cli, [*args, "rollback"])
    assert back.exit_code == 0 and read_current(models) == base

    forced = runner.invoke(cli, [*args, "promote", bad, "--no-evaluate", "--force"])
    assert forced.exit_code == 0 and f"promoted {bad} with --force" in forced.output
    assert "regression voice kokoro:jm_kumo" in registry.history(models)[-1]["reason"]

    missing = runner.invoke(cli, [*args, "promote", "ft-v9", "--no-evaluate"])
    assert missing.exit_code != 0 and "no model version" in missing.output


def test_promote_cli_options_change_the_rule(tmp_path: Path) -> None:
    home = tmp_path / "home"
    models = home / "models"
    base = _register(models, "base", _test(), _regression())
    registry.set_current(models, base)
    slightly = _register(models, "ft", _test(-2), _regression("kokoro:jm_kumo", extra=12))
    args = ["--home", str(home), "models", "promote", slightly, "--no-evaluate"]
    runner = CliRunner()
    # a floor above the +0.03 worsening of jm_kumo lets it through
    assert runner.invoke(cli, [*args, "--regression-floor", "0.05"]).exit_code == 0
    assert read_current(models) == slightly


def test_promote_help_states_the_rule() -> None:
    result = CliRunner().invoke(cli, ["models", "promote", "--help"])
    assert result.exit_code == 0
    for part in ("upper", "bound is below 0", "max(tolerance x its WER, floor)", "--confidence", "--min-slice-words", "--regression-manifest"):
        assert part in result.output
