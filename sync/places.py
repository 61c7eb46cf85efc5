"""Where sync reads and writes: the Label Studio project it talks to, and the work dir's files.

The callers (habla-ls' commands) build these from their settings; sync never reads settings itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class LabelStudioProject:
    """The Label Studio project habla-ls pushes to and pulls from."""

    url: str
    title: str
    # Label Studio serves local audio only from below its LOCAL_FILES_DOCUMENT_ROOT; the archive lies below it.
    document_root: Path
    # A secret: never part of a repr, never logged. None where nothing talks to the server (a dry run).
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class WorkPaths:
    """The work dir's files that sync keeps."""

    archive_dir: Path  # the audio, content-addressed (:mod:`sync.archive`)
    ledger_path: Path  # what was archived, pushed and pulled (:mod:`sync.ledger`)
    datasets_dir: Path  # the dataset manifest a pull writes (:mod:`sync.manifest`)
