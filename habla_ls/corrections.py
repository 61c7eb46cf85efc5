"""The evidence every decision about the page is made on: the tasks a human corrected, each with the
predictions it had *before* its first correction (a model trained on a correction is never credited for
predicting it), and the project habla-ls pushes to."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from habla_ls.config import Settings
from sync.dm_filters import number_filter
from sync.labelling_config import DATA_SHA256, read_result
from sync.ledger import Ledger
from sync.ledger_records import STATUS_OK
from sync.ls_client import LabelStudioClient
from sync.ls_times import parse_time
from sync.pull import find_project_id
from sync.pull_plan import choose


@dataclass(frozen=True)
class CorrectedTask:
    task_id: int
    sha256: str  # the archived audio ("" for a task habla-ls did not push)
    reference: str  # the human correction
    corrected_at: dt.datetime  # the task's first (not skipped) annotation
    predictions: dict[str, str]  # model_version -> text, only predictions made before corrected_at


def corrected_tasks(client: LabelStudioClient, project_id: int) -> list[CorrectedTask]:
    """Every human-corrected task with the predictions it had before its first correction."""
    out = []
    for task in client.iter_tasks(project_id, filters=[number_filter("total_annotations", "greater", 0)], all_fields=True):
        record = choose(task)
        if record.status != STATUS_OK or not record.transcript:
            continue
        times = [parse_time(a.get("created_at")) for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        times = [t for t in times if t is not None]
        if not times:
            continue
        first = min(times)
        made_before: dict[str, tuple[dt.datetime, str]] = {}
        for prediction in task.get("predictions") or []:
            version = str(prediction.get("model_version") or "").strip()
            created = parse_time(prediction.get("created_at"))
            if not version or created is None or created >= first:
                continue
            text, _flags = read_result(prediction.get("result") or [])
            if version not in made_before or created > made_before[version][0]:
                made_before[version] = (created, text)  # the latest one the annotator could have seen
        sha = str((task.get("data") or {}).get(DATA_SHA256) or "")
        out.append(CorrectedTask(int(task["id"]), sha, record.transcript, first, {v: t for v, (_, t) in made_before.items()}))
    return out


def project_id_of(settings: Settings, client: LabelStudioClient) -> int:
    """The Label Studio project habla-ls pushes to (from the ledger, else found by title)."""
    with Ledger(settings.ledger_path) as ledger:
        return ledger.project_id(settings.label_studio_url, settings.project_title) or find_project_id(
            settings.label_studio_project(need_token=False), ledger, client
        )
