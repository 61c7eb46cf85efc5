"""What ``habla-ls status`` reports, as plain data (read-only: no server needed), and the lines of the
watch and the finish (the command itself is :mod:`habla_ls.cli_status`)."""

from __future__ import annotations

from typing import Any

from habla_ls.config import Settings
from habla_ls.finish_journal import load_state
from habla_ls.learning_curve import curve, to_dicts
from habla_ls.prefill import load as load_prefill
from habla_ls.watch_state import load_watch_state, watch_running
from habla_ls.word_marks import read_report as read_word_checks
from ml_backend.registry import PRUNED_FIELD, list_versions, read_card, read_current
from sync.ledger import Ledger

CARD_FIELDS = ("version", "parent", "base_model", "created", "train_clips", "test_wer_raw", "test_wer_normalised", "regression_wer")
WATCH_FIELDS = ("options", "last_pass", "next", "corrections", "last_finish", "last_failure", "pass_failures", "finish_failures")


def collect_status(settings: Settings) -> dict[str, Any]:
    counts = {"archived": 0, "pushed": 0, "annotated": 0}
    if settings.ledger_path.exists():
        with Ledger(settings.ledger_path) as ledger:
            counts = ledger.counts(ledger.project_id(settings.label_studio_url, settings.project_title))
    versions = []
    for version in list_versions(settings.models_dir):
        card = read_card(settings.models_dir / version)
        versions.append({k: card.get(k) for k in CARD_FIELDS} | {"version": version, "pruned": bool(card.get(PRUNED_FIELD))})
    checks, checks_problem = read_word_checks(settings.reports_dir)
    return {
        "home": str(settings.home),
        "counts": counts,
        "served_version": read_current(settings.models_dir),
        "versions": versions,
        # The last prefill decision (per-source WER on corrected tasks), as saved by round/promote/connect.
        "prefill": decision.to_dict() if (decision := load_prefill(settings.home)) is not None else None,
        "watch": watch_status(settings),
        "finish": finish_status(settings),
        # Each version's WER by the corrections it was trained on (the table and reports/learning-curve.png).
        "learning_curve": to_dicts(curve(settings.models_dir, settings.reports_dir)),
        # The page's word checks: threshold, each version's recall against words marked, the calibration.
        "word_checks": checks.to_dict() if checks is not None else None,
        "word_checks_problem": checks_problem,  # why saved checks cannot be shown (an older habla-ls wrote them)
        # What `habla-ls models prune` would free: a term's refused versions add up.
        "prunable": prunable(settings),
    }


def prunable(settings: Settings) -> dict[str, Any]:
    from training.pruning import plan_prune

    plan = plan_prune(settings.models_dir)
    return {"versions": sorted(plan.remove), "bytes": plan.bytes}


def watch_status(settings: Settings) -> dict[str, Any] | None:
    """The watch's last pass, next action and why (None: no watch ever ran on this work dir)."""
    state = load_watch_state(settings.home)
    if not state:
        return None
    process = state.get("process") or {}
    return {"running": watch_running(state), "pid": process.get("pid")} | {k: state.get(k) for k in WATCH_FIELDS}


def finish_status(settings: Settings) -> dict[str, Any]:
    """The last finish (whoever ran it: watch, backend, by hand) and one that did not end, if any."""
    state = load_state(settings.home)
    return {"last": state.get("last"), "unfinished": state.get("run"), "trained": _without_rows(state.get("trained"))}


def _without_rows(trained: Any) -> dict[str, Any] | None:
    return {k: v for k, v in trained.items() if k != "rows"} if isinstance(trained, dict) else None


def describe_loop(status: dict[str, Any]) -> list[str]:
    """The watch and finish lines of ``habla-ls status``."""
    out = []
    watch = status.get("watch")
    if watch is None:
        out.append("watch:         never run here (`habla-ls watch` runs the loop by itself)")
    else:
        options = watch.get("options") or {}
        state = f"running (pid {watch['pid']})" if watch["running"] else "not running"
        every = f", every {options['interval']:g} s, finish at {options.get('threshold')}" if options.get("interval") else ""
        out.append(f"watch:         {state}{every}")
        last = watch.get("last_pass") or {}
        if last:
            out.append(f"  last pass:   {last.get('outcome')} (started {last.get('started')}, ended {last.get('finished') or '-'})")
        corrections = watch.get("corrections")
        if corrections:
            since = f"since {corrections['since_version']} was trained" if corrections.get("since_version") else "(no training yet)"
            out.append(f"  corrections: {corrections['count']} ({corrections['minutes']:.1f} min of audio) {since}")
        failure = watch.get("last_failure")
        if failure and (watch.get("pass_failures") or watch.get("finish_failures")):
            out.append(f"  failing:     {failure.get('step')}: {failure.get('error')} (at {failure.get('at')})")
        nxt = watch.get("next")
        if nxt:
            when = f"at {nxt.get('at')}" if watch["running"] else "when it runs again"
            out.append(f"  next:        {nxt.get('action')} {when}: {nxt.get('why')}")
    finish = status.get("finish") or {}
    if finish.get("unfinished"):
        run = finish["unfinished"]
        failed = run.get("failed")
        state = f"failed at {failed['step']}: {failed['error']}" if failed else "interrupted"
        out.append(f"finish:        one started {run.get('started')} did not end ({state}); the next finish resumes it")
    last = finish.get("last")
    if last:
        out.append(f"last finish:   {last.get('outcome')} at {last.get('at')}: {last.get('detail')}")
    return out
