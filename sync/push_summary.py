"""What one ``sync push`` did (or, in a dry run, would do): :class:`PushSummary` and its report lines."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sync.habla import Problem, SkippedDir, skipped_dirs_line


@dataclass
class PushSummary:
    project_id: int | None = None
    project_title: str = ""
    project_created: bool = False
    dry_run: bool = False
    found: int = 0  # segments (WAVs) seen in the selected sessions
    new: int = 0  # tasks created by this run (or that would be, in a dry run)
    already: int = 0  # segments that already had a task
    recovered: int = 0  # keys a crashed run had imported but not recorded, found in Label Studio
    refreshed: int = 0  # existing tasks given a better prefill (e.g. ground truth written since)
    page_updated: bool = False  # an existing project got this release's labelling page
    page_error: str = ""  # why it could not (the push itself goes on)
    context_refreshed: int = 0  # existing tasks whose shown context (translation, time, ...) was updated
    not_pushed_limit: int = 0  # new segments left for a later run by --limit
    audio_updated: int = 0  # tasks given new audio because their WAV changed on disk (or would be, dry run)
    audio_urls_fixed: int = 0  # tasks whose audio URL was rewritten for a moved document root
    skipped: list[Problem] = field(default_factory=list)
    skipped_dirs: list[SkippedDir] = field(default_factory=list)  # not Habla sessions: never read
    converted: list[str] = field(default_factory=list)

    def skip_reasons(self) -> Counter[str]:
        return Counter(_reason_kind(p.reason) for p in self.skipped)

    def lines(self) -> list[str]:
        verb = "would push" if self.dry_run else "pushed"
        project = f"project {self.project_title!r}" + (f" (id {self.project_id})" if self.project_id else " (new)")
        out = [
            f"{project}: {self.found} segments found; {verb} {self.new} new, {self.already} already there, "
            f"{len(self.skipped)} skipped"
        ]
        if self.recovered:
            out.append(f"recovered {self.recovered} tasks an interrupted push had created (no duplicates made)")
        if self.refreshed:
            out.append(f"updated the prefilled transcript of {self.refreshed} tasks (better Habla transcript now)")
        if self.page_updated:
            out.append("updated the project's labelling page to this release's")
        if self.page_error:
            out.append(f"kept the project's old labelling page: {self.page_error}")
        if self.context_refreshed:
            out.append(f"updated what the labelling page shows for {self.context_refreshed} existing tasks")
        if self.not_pushed_limit:
            out.append(f"{self.not_pushed_limit} new segments left for a later run (--limit)")
        if self.audio_updated:
            verb = "would update" if self.dry_run else "updated"
            out.append(
                f"{verb} the audio of {self.audio_updated} tasks whose WAV changed on disk (annotations kept; "
                "the old audio stays in the archive)"
            )
        if self.audio_urls_fixed:
            out.append(f"rewrote the audio URL of {self.audio_urls_fixed} tasks (the archive moved below the document root)")
        if line := skipped_dirs_line(self.skipped_dirs):
            out.append(line)
        if self.converted:
            out.append(f"{len(self.converted)} clips converted to 16 kHz mono on the way into the archive")
        for reason, count in sorted(self.skip_reasons().items()):
            out.append(f"  skipped {count}: {reason}")
        return out


def _reason_kind(reason: str) -> str:
    """Groups reasons for the summary: the text before any detail in parentheses or after a semicolon."""
    return reason.split(" (")[0].split(";")[0].strip()
