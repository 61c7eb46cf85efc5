"""What a term round resumed after its finish had answered records: that finish's answer, read from the
finish journal and the registry (the three-round term in tests/test_term.py covers a promotion end to end)."""

from __future__ import annotations

from habla_ls.config import load_settings
from habla_ls.finish_journal import save_state
from habla_ls.term import answer_of_last_training
from ml_backend.registry import read_current
from training.registry import set_current, update_card


def test_the_answer_of_the_last_training_refused_promoted_or_none(tmp_path, tiny_registry) -> None:
    settings = load_settings(environ={}, home=str(tmp_path / "home"))
    base = tiny_registry(settings.models_dir)
    assert answer_of_last_training(settings, base) == (None, "up-to-date", base)  # nothing trained yet

    candidate = tiny_registry(settings.models_dir, make_current=False)
    save_state(settings.home, {"trained": {"version": candidate}})
    assert read_current(settings.models_dir) == base
    # Trained and not served: the gate refused it, against what is served.
    assert answer_of_last_training(settings, base) == (candidate, "refused", base)

    # Served since: promoted, against the version its card names as the one it replaced.
    set_current(settings.models_dir, candidate, reason="test")
    update_card(settings.models_dir, candidate, baseline_version=base)
    assert answer_of_last_training(settings, candidate) == (candidate, "promoted", base)
