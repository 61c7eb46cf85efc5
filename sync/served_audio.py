"""Whether Label Studio serves the archive's audio to the labelling page, and why not when it does not.

Task audio is a Local Files URL, ``/data/local-files/?d=<path below the document root>``. habla-ls writes
that path relative to *its* idea of the document root (``label_studio_document_root``, else
``HABLA_LS_HOME``); Label Studio resolves it against *its own* ``LOCAL_FILES_DOCUMENT_ROOT``. When the
two differ, Label Studio still accepts the storage (the archive can be below both) and the import, and
every task's audio answers 404: the labelling page plays nothing and nobody is told. So a push fetches
one clip through Label Studio, as the browser would, before it writes any task that points at audio.

Label Studio has no API that reports its document root; its storage check names it when refusing a
path outside it, and ``/`` is outside every root (or equal to it), so validating ``/`` reveals it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

from sync.ls_client import LabelStudioClient
from sync.ls_errors import LabelStudioError, LabelStudioUnreachable

LOCAL_FILES_PREFIX = "/data/local-files/?d="
# As Label Studio words it (io_storages/localfiles/models.py), possibly inside JSON (quotes escaped).
_ROOT_IN_MESSAGE = re.compile(r'LOCAL_FILES_DOCUMENT_ROOT=\\?"(?P<root>(?:[^"\\]|\\.)*?)\\?"')
_HTTP_STATUS = re.compile(r"HTTP (\d{3})")
WAV_MAGIC = b"RIFF"


class AudioNotServed(LabelStudioError):
    """Label Studio would not play the tasks' audio; ``str()`` is one line naming both document roots."""


def audio_url(relative_path: str) -> str:
    return LOCAL_FILES_PREFIX + quote(relative_path, safe="/")


def document_root_in(message: str) -> str | None:
    """The ``LOCAL_FILES_DOCUMENT_ROOT`` a Label Studio storage error names, or None."""
    match = _ROOT_IN_MESSAGE.search(message)
    if not match:
        return None
    raw = match["root"]
    try:
        return json.loads(f'"{raw}"')  # undo JSON escaping when the message came inside a JSON body
    except ValueError:
        return raw


def label_studio_document_root(client: LabelStudioClient, project_id: int) -> tuple[str | None, str]:
    """(Label Studio's own LOCAL_FILES_DOCUMENT_ROOT, "") or (None, why it could not be learnt)."""
    try:
        client.validate_local_storage(project_id, "/", title="habla-ls document root probe")
    except LabelStudioUnreachable:
        raise
    except LabelStudioError as exc:
        root = document_root_in(str(exc))
        if root is not None:
            return root, ""
        status = _HTTP_STATUS.search(str(exc))
        return None, f"its storage check answered {'HTTP ' + status.group(1) if status else 'an error'} without naming it"
    return None, "its storage check accepted '/'"


def _roots(ours: Path, theirs: str | None, why_unknown: str) -> str:
    told = f"Label Studio's is {theirs}" if theirs is not None else f"Label Studio's could not be learnt ({why_unknown})"
    return f"habla-ls' document root is {ours} (its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT setting, else HABLA_LS_HOME) and {told}"


def _hint(ours: Path, theirs: str | None, archive_file: Path) -> str:
    if theirs is None:
        return (
            "start Label Studio with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT set to habla-ls' document root "
            "(a dir containing HABLA_LS_HOME)"
        )
    if Path(theirs).resolve() == ours:
        return (
            f"the roots agree, so Label Studio cannot read {archive_file} (does it run in a container or on "
            "another machine with another view of the disk?)"
        )
    return (
        "set LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT to the same dir (one containing HABLA_LS_HOME) for habla-ls "
        "and for Label Studio"
    )


def check_audio_served(
    client: LabelStudioClient, project_id: int, relative_path: str, document_root: Path, archive_file: Path
) -> None:
    """Fetches the start of one archived clip through Label Studio; :class:`AudioNotServed` if it is not
    served. Nothing has been imported or changed yet when this fails, so a push re-run after the fix goes
    on where it stopped."""
    url = audio_url(relative_path)
    try:
        response = client.fetch_file(url, first_bytes=12)
    except LabelStudioUnreachable:
        raise
    except LabelStudioError as exc:
        status = _HTTP_STATUS.search(str(exc))
        answer = f"HTTP {status.group(1)}" if status else "an error"
        if "LOCAL_FILES_SERVING_ENABLED" in str(exc) or "disabled" in str(exc):
            raise AudioNotServed(
                f"Label Studio does not serve local files ({url} answered {answer}): start it with "
                f"LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true; {_roots(document_root, None, 'serving is off')}. "
                "No task was imported or changed"
            ) from None
    else:
        if response.content[: len(WAV_MAGIC)] == WAV_MAGIC:
            return
        answer = f"HTTP {response.status_code} with something that is not a WAV"
    theirs, why = label_studio_document_root(client, project_id)
    raise AudioNotServed(
        f"Label Studio does not serve the archived audio ({url} answered {answer}), so its tasks would play "
        f"nothing: {_roots(document_root, theirs, why)}; {_hint(document_root, theirs, archive_file)}. "
        "No task was imported or changed; run the push again once they agree"
    )


def storage_refused(exc: LabelStudioError, archive_dir: Path, document_root: Path) -> LabelStudioError:
    """The error to show when Label Studio refuses a Local Files storage on the archive: both roots named
    when its message says which is its own, else its own message."""
    theirs = document_root_in(str(exc))
    if theirs is None:
        return exc
    if "cannot be the same" in str(exc):
        return AudioNotServed(
            f"Label Studio refuses a Local Files storage on its document root itself ({theirs}): give it a "
            f"document root above the archive {archive_dir}, the same as habla-ls' ({document_root})"
        )
    return AudioNotServed(
        f"Label Studio refuses a Local Files storage on the archive {archive_dir} (it is not below Label Studio's "
        f"document root): {_roots(document_root, theirs, '')}; {_hint(document_root, theirs, archive_dir)}"
    )
