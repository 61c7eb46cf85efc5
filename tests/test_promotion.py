"""The promotion gate both ways, and the models list/promote/rollback commands."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from ml_backend.registry import read_current
from training import registry
from training.promotion import check_gate, promote


def _card(version: str, wer: float | None, regression: float | None, split: str = "t1", reg_set: str = "r1") -> dict:
    return {
        "version": version,
        "test_wer_normalised": wer,
        "regression_wer": regression,
        "test_split_id": split,
        "regression_set_id": reg_set,
    }


def _register(models_dir: Path, name: str, **card) -> str:
    with registry.new_version(models_dir, name) as (version, staging):
        (staging / "hf").mkdir()
        registry.write_card(staging, {"version": version, "name": name, **card})
    return version


@pytest.mark.parametrize(
    ("candidate", "passed", "reason_part"),
    [
        (_card("c", 0.30, 0.20), True, "beats"),
        (_card("c", 0.395, 0.20), False, "does not beat"),  # 1.25 % better: below the 2 % margin
        (_card("c", 0.30, 0.215), False, "forgets standard Spanish"),  # 7.5 % worse on regression
        (_card("c", 0.30, 0.209), True, "within 5%"),  # 4.5 % worse: tolerated
        (_card("c", 0.30, 0.20, split="t2"), False, "different test splits"),
        (_card("c", None, 0.20), False, "no test WER for c"),
        (_card("c", 0.30, None), False, "no regression-set WER for c"),
    ],
)
def test_gate_both_ways(candidate: dict, passed: bool, reason_part: str) -> None:
    decision = check_gate(candidate, _card("cur", 0.40, 0.20))
    assert decision.passed is passed
    assert any(reason_part in r for r in decision.reasons), decision.reasons


def test_gate_passes_when_nothing_is_served() -> None:
    assert check_gate(_card("c", None, None), None).passed


def test_promote_switches_current_only_when_the_gate_passes(tmp_path: Path) -> None:
    models = tmp_path / "models"
    base = _register(models, "base", test_wer_normalised=0.40, regression_wer=0.20, test_split_id="t", regression_set_id="r")
    registry.set_current(models, base)
    worse = _register(models, "ft", test_wer_normalised=0.395, regression_wer=0.20, test_split_id="t", regression_set_id="r")
    better = _register(models, "ft", test_wer_normalised=0.30, regression_wer=0.20, test_split_id="t", regression_set_id="r")

    assert not promote(models, worse).passed
    assert read_current(models) == base
    assert promote(models, better).passed
    assert read_current(models) == better
    assert registry.history(models)[-1]["previous"] == base
    forced = promote(models, worse, force=True)
    assert not forced.passed and read_current(models) == worse
    assert "--force" in registry.history(models)[-1]["reason"]


def test_models_cli_list_promote_rollback(tmp_path: Path) -> None:
    home = tmp_path / "home"
    models = home / "models"
    base = _register(models, "base", test_wer_normalised=0.40, regression_wer=0.20, test_split_id="t", regression_set_id="r")
    registry.set_current(models, base)
    bad = _register(models, "ft", test_wer_normalised=0.30, regression_wer=0.30, test_split_id="t", regression_set_id="r")
    good = _register(models, "ft", test_wer_normalised=0.30, regression_wer=0.20, test_split_id="t", regression_set_id="r")
    runner = CliRunner()
    args = ["--home", str(home), "models"]

    refused = runner.invoke(cli, [*args, "promote", bad, "--no-evaluate"])
    assert refused.exit_code != 0
    assert "forgets standard Spanish" in refused.output and "not promoted" in refused.output
    assert read_current(models) == base

    accepted = runner.invoke(cli, [*args, "promote", good, "--no-evaluate"])
    assert accepted.exit_code == 0, accepted.output
    assert f"promoted {good}" in accepted.output

    listed = runner.invoke(cli, [*args, "list"])
    assert listed.exit_code == 0
    served = [line for line in listed.output.splitlines() if line.startswith("*")]
    assert len(served) == 1 and good in served[0] and "0.3000" in served[0]

    back = runner.invoke(cli, [*args, "rollback"])
    assert back.exit_code == 0 and read_current(models) == base

    missing = runner.invoke(cli, [*args, "promote", "ft-v9", "--no-evaluate"])
    assert missing.exit_code != 0 and "no model version" in missing.output
