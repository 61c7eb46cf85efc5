"""``habla-ls sync pull``: Label Studio annotations -> the dataset manifest (and, optionally, Habla).

One transcript per task: the latest (by ``updated_at``) annotation that was not cancelled. A task is
left out, and counted, when every annotation was skipped/cancelled, when the text is empty, or when it
is flagged noise / unintelligible / wrong language. The ledger keeps, per task, the annotation last
used; a pull reports what is new or updated since, and rewrites the manifest only if its bytes change.

The first pull (or ``full=True``) reads every annotated task; each later one lists the tasks Label Studio
shows as touched since the previous pull and exports only those that differ (:mod:`sync.pull_changes`
says how, and why that never misses an update).

Label Studio is a separate process: it is read from background threads (:mod:`sync.pull_changes`),
while this thread turns the snapshot into records, manifest rows and the manifest's bytes
(:mod:`sync.pull_plan`); the listing's findings then redo only the tasks it showed changed. Nothing is
written before the listing is in: the ledger, then the manifest, are written once, from the plan.
"""

from __future__ import annotations

from pathlib import Path

from sync.habla import Problem
from sync.habla_writer import HablaWriteError, write_corrections
from sync.ledger import Ledger
from sync.ls_client import LabelStudioClient
from sync.ls_errors import LabelStudioError
from sync.manifest import write_manifest
from sync.places import LabelStudioProject, WorkPaths
from sync.pull_changes import ChangeFinder, known_marks
from sync.pull_plan import LedgerView, PlanMemo, PullPlan, PullSummary, plan_pull


def find_project_id(project: LabelStudioProject, ledger: Ledger, client: LabelStudioClient) -> int:
    """The id of ``project`` in Label Studio (found by title), remembered in the ledger."""
    found = client.find_project(project.title)
    if found is None:
        raise LabelStudioError(
            f"Label Studio at {client.url} has no project titled {project.title!r}: run `habla-ls sync push` first"
        )
    ledger.remember_project(project.url, project.title, int(found["id"]))
    return int(found["id"])


def pull(
    project: LabelStudioProject,
    paths: WorkPaths,
    *,
    write_habla: bool = False,
    full: bool = False,
    client: LabelStudioClient | None = None,
) -> PullSummary:
    """One pull of ``project`` into the ledger and the manifest of ``paths``; ``full`` re-reads every
    annotated task instead of only those Label Studio shows as touched."""
    own_client = client is None
    client = client or LabelStudioClient.for_project(project)
    try:
        with Ledger(paths.ledger_path) as ledger:
            project_id = find_project_id(project, ledger, client)
            found_at = client.answered_at()  # the server's clock before anything below reads it
            previous = ledger.pulls(project_id)
            finder = ChangeFinder(client, project_id, known_marks(previous))
            finder.start(ledger.pull_anchor(project_id), full, found_at)
            known = LedgerView.read(ledger, previous, paths.archive_dir)  # meanwhile Label Studio makes the snapshot
            memo = PlanMemo()
            plan_pull(project_id, finder.read(), known, memo)  # meanwhile it lists what was touched since the snapshot began
            # Redoes only the tasks the listing changed.
            plan = plan_pull(project_id, finder.finish(), known, memo, write_habla=write_habla)
            return apply_plan(ledger, plan, paths.datasets_dir)
    finally:
        if own_client:
            client.close()


def apply_plan(ledger: Ledger, plan: PullPlan, datasets_dir: Path) -> PullSummary:
    """Writes what ``plan`` holds: the ledger, then the manifest in ``datasets_dir``, then Habla's files; the
    plan's summary, completed."""
    summary = plan.summary
    # Records, removals and the anchor move together: a crash before this line leaves the last pull's state.
    ledger.save_pulls(summary.project_id, plan.fetched, plan.removed, anchor=plan.anchor, full=plan.full)
    summary.manifest_path = datasets_dir / "manifest.jsonl"
    summary.manifest_changed = write_manifest(datasets_dir, plan.rows, rendered=plan.rendered)
    for session_dir, corrections in sorted(plan.corrections.items()):
        try:
            if write_corrections(session_dir, corrections):
                summary.habla_written.append(session_dir)
        except (HablaWriteError, OSError) as exc:
            summary.problems.append(Problem(str(session_dir), str(exc)))
    return summary
