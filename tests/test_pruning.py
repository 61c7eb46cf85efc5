"""`habla-ls models prune`: refused versions lose their weights, never a version that is served, was served,
is a parent or is the newest candidate; cards stay; a pruned version can be neither loaded nor served."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from habla_ls.cli import cli
from ml_backend.registry import PRUNED_FIELD, RegistryError, read_card, read_current, resolve
from training import registry
from training.base_model import resolve_base
from training.deliver import DeliveryError, delivery_source
from training.evaluate import EvaluateError, servable_model
from training.export import export_version
from training.options import TrainError, TrainOptions
from training.pruning import plan_prune, prune_versions

WEIGHTS = 3000  # bytes of "weights" per version: hf/model.safetensors 2000 + ct2/model.bin 1000


def _register(models: Path, name: str, parent: str | None) -> str:
    with registry.new_version(models, name) as (version, staging):
        (staging / "hf").mkdir()
        (staging / "hf" / "config.json").write_text("{}")
        (staging / "hf" / "model.safetensors").write_bytes(b"w" * (2000 - 2))
        (staging / "ct2").mkdir()
        (staging / "ct2" / "model.bin").write_bytes(b"c" * 1000)
        registry.write_card(staging, {"name": name, "version": version, "parent": parent})
    return version


@pytest.fixture
def term(tmp_path: Path) -> Path:
    """A term's registry: base served then replaced by ft-v2; ft-v1, ft-v3, ft-v4, ft-v5 refused, ft-v4
    trained from ft-v3."""
    models = tmp_path / "home" / "models"
    base = _register(models, "base", None)
    registry.set_current(models, base)
    _register(models, "ft", base)
    served = _register(models, "ft", base)
    registry.set_current(models, served)
    third = _register(models, "ft", served)
    _register(models, "ft", third)
    _register(models, "ft", served)
    return models


def test_plan_keeps_what_serving_rollback_parents_and_force_need(term: Path) -> None:
    plan = plan_prune(term)
    assert plan.remove == {"ft-v1": WEIGHTS, "ft-v4": WEIGHTS}
    assert plan.keep == {
        "ft-v2": "served now",
        "base-v1": "served before: a rollback may return to it",
        "ft-v3": "parent of ft-v4",
        "ft-v5": "newest candidate: `promote --force` may still want it",
    }
    assert set(plan_prune(term, keep_latest=0).remove) == {"ft-v1", "ft-v4", "ft-v5"}


def test_prune_removes_weights_keeps_cards_and_refuses_to_serve_them(term: Path) -> None:
    home = term.parent
    runner = CliRunner()
    dry = runner.invoke(cli, ["--home", str(home), "models", "prune", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would prune ft-v1" in dry.output and "keep   ft-v3: parent of ft-v4" in dry.output
    assert (term / "ft-v1" / "hf" / "model.safetensors").is_file()

    status = runner.invoke(cli, ["--home", str(home), "status"])
    assert status.exit_code == 0, status.output
    assert "2 refused version(s) hold 0.0 MB of weights that nothing needs: `habla-ls models prune`" in status.output

    done = runner.invoke(cli, ["--home", str(home), "models", "prune"])
    assert done.exit_code == 0, done.output
    assert "freed 0.0 MB (2 version(s))" in done.output
    for version in ("ft-v1", "ft-v4"):
        assert [p.name for p in (term / version).iterdir()] == ["model_card.json"]
        card = read_card(term / version)
        assert card[PRUNED_FIELD]["bytes"] == WEIGHTS and card["parent"]  # the card keeps what it said
    for version in ("base-v1", "ft-v2", "ft-v3", "ft-v5"):
        assert (term / version / "ct2" / "model.bin").is_file()

    with pytest.raises(RegistryError, match="removed by `habla-ls models prune`"):
        resolve(term, "ft-v1")
    with pytest.raises(RegistryError, match="removed by `habla-ls models prune`"):
        registry.set_current(term, "ft-v4")
    # Everything else that needs a version's weights says the same, in its own error.
    with pytest.raises(EvaluateError, match="removed by `habla-ls models prune`"):
        servable_model(home, "ft-v1")
    with pytest.raises(RegistryError, match="removed by `habla-ls models prune`"):
        export_version(home, "ft-v1", check=False)
    with pytest.raises(DeliveryError, match="removed by `habla-ls models prune`"):
        delivery_source(term, "ft-v1")
    with pytest.raises(TrainError, match="removed by `habla-ls models prune`"):
        resolve_base("ft-v1", term)
    assert read_current(term) == "ft-v2"
    listed = runner.invoke(cli, ["--home", str(home), "models", "list"])
    assert [line.split()[0] for line in listed.output.splitlines() if "(weights pruned)" in line] == ["ft-v1", "ft-v4"]
    status = runner.invoke(cli, ["--home", str(home), "status"])
    assert "refused version(s) hold" not in status.output
    assert [line.split()[0] for line in status.output.splitlines() if "(weights pruned)" in line] == ["ft-v1", "ft-v4"]
    again = runner.invoke(cli, ["--home", str(home), "models", "prune"])
    assert again.exit_code == 0 and "nothing to prune" in again.output


def test_a_prune_cut_short_after_marking_is_finished_by_the_next(term: Path) -> None:
    # The state a crash between marking the card and removing the files leaves behind.
    registry.update_card(term, "ft-v1", **{PRUNED_FIELD: {"at": "2026-12-06T00:00:00+00:00", "bytes": WEIGHTS}})
    with pytest.raises(RegistryError):
        resolve(term, "ft-v1")
    plan = plan_prune(term)
    assert set(plan.remove) == {"ft-v1", "ft-v4"}
    assert prune_versions(term, plan) == 2 * WEIGHTS
    assert read_card(term / "ft-v1")[PRUNED_FIELD]["at"] == "2026-12-06T00:00:00+00:00"
    assert not (term / "ft-v1" / "hf").exists()
    assert plan_prune(term).remove == {}


def test_a_round_trains_from_the_root_of_the_served_line_by_default(term: Path) -> None:
    # bench/term measured whole terms with every round one fine-tune of the root model: the default.
    default = TrainOptions().start_from
    assert resolve_base(None, term, default).parent == "base-v1"
    assert resolve_base(None, term, "served").parent == "ft-v2"
    registry.set_current(term, "ft-v4")  # trained from ft-v3, trained from ft-v2, from base-v1
    assert resolve_base(None, term, default).parent == "base-v1"
