"""The served model's view of archived clips: transcripts (with timed words) and encoder vectors, each
decoded at most once per model version through the prediction cache the ML backend shares; and the few
facts about Label Studio tasks that the round, the predictions and the page's checks all read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ml_backend.audio import AudioError, decode
from ml_backend.engine import Engine
from ml_backend.loading import load_engine, locate_model
from ml_backend.prediction_cache import (
    WORDS_META,
    CachedPrediction,
    PredictionCache,
    cached_prediction,
    model_fingerprint,
)
from ml_backend.registry import RegistryError, read_card, version_dir
from sync.archive import Archive
from sync.labelling_config import DATA_SHA256, transcription_result


class ServedModel:
    """A model version to transcribe with; loaded only if the prediction cache lacks something."""

    def __init__(self, model: Path, language: str):
        self.version, self.load_dir = locate_model(model)
        self.fingerprint = model_fingerprint(self.load_dir)
        self.language = language
        self._engine: Engine | None = None

    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = load_engine(self.load_dir, language=self.language)
        return self._engine


def transcribe_audio(
    model: ServedModel,
    shas: Sequence[str],
    archive: Archive,
    cache: PredictionCache,
    *,
    batch_size: int = 8,
    desc: str = "transcribing",
    words: bool = False,
) -> tuple[dict[str, CachedPrediction], dict[str, str]]:
    """(sha -> prediction, sha -> why its audio is unusable) for the archived clips ``shas``.

    Each distinct clip is decoded at most once per model version: cached transcripts are reused and new
    ones are cached batch by batch (an interrupted run keeps what it decoded). ``words``: the predictions
    must carry their timed words (what the page's checks need); one cached before words were kept is
    decoded again, once.
    """
    distinct = list(dict.fromkeys(shas))
    found = cache.get_many(distinct, model.version, model.fingerprint)
    if words:
        found = {sha: p for sha, p in found.items() if WORDS_META in p.meta or not p.text.strip()}
    todo = [sha for sha in distinct if sha not in found]
    errors: dict[str, str] = {}
    with tqdm(total=len(todo), desc=desc, unit="clip", disable=None if todo else True) as bar:
        for start in range(0, len(todo), batch_size):
            batch, clips = [], []
            for sha in todo[start : start + batch_size]:
                try:
                    if not archive.contains(sha):
                        raise AudioError("audio not in the archive (was it pushed by habla-ls?)")
                    clips.append(decode(archive.path_for(sha)))
                    batch.append(sha)
                except AudioError as exc:
                    errors[sha] = str(exc)
            if clips:
                results = model.engine().transcribe(clips, words=words)
                new = {sha: cached_prediction(t) for sha, t in zip(batch, results, strict=True)}
                cache.put_many(model.version, model.fingerprint, list(new.items()))
                found.update(new)
            bar.update(min(batch_size, len(todo) - start))
    return found, errors


def embed_audio(
    model: ServedModel, shas: Sequence[str], archive: Archive, cache: PredictionCache, *, batch_size: int = 32
) -> dict[str, Any]:
    """sha -> the served model's encoder vector of that archived clip (cached per version, like transcripts);
    clips whose audio cannot be read are left out (the transcription step names them)."""
    distinct = list(dict.fromkeys(shas))
    found: dict[str, Any] = cache.get_embeddings(distinct, model.version, model.fingerprint)
    todo = [sha for sha in distinct if sha not in found and archive.contains(sha)]
    with tqdm(total=len(todo), desc=f"encoder vectors of {model.version}", unit="clip", disable=None if todo else True) as bar:
        for start in range(0, len(todo), batch_size):
            batch, clips = [], []
            for sha in todo[start : start + batch_size]:
                try:
                    clips.append(decode(archive.path_for(sha)))
                    batch.append(sha)
                except AudioError:
                    continue
            if clips:
                new = list(zip(batch, model.engine().embed(clips), strict=True))
                cache.put_embeddings(model.version, model.fingerprint, new)
                found.update(new)
            bar.update(min(batch_size, len(todo) - start))
    return found


def reference_version(models_dir: Path, served: str) -> str | None:
    """The served version's parent when it is still in the registry (what it was trained from)."""
    try:
        parent = read_card(version_dir(models_dir, served)).get("parent")
        if parent:
            version_dir(models_dir, parent)
            return parent
    except RegistryError:
        pass
    return None


def is_labelled(task: dict[str, Any]) -> bool:
    annotations = task.get("annotations")
    if annotations is not None:
        return any(not a.get("was_cancelled") for a in annotations)
    return bool(task.get("total_annotations", 0) - task.get("cancelled_annotations", 0) > 0)


def task_key(task: dict[str, Any]) -> str:
    return str((task.get("data") or {}).get("ext_id", "?"))


def prediction_payload(task_id: int, p: CachedPrediction, version: str) -> dict[str, Any]:
    return {
        "task": task_id,
        "result": transcription_result(p.text),
        "score": round(float(p.score or 0.0), 4),
        "model_version": version,
    }


def has_prediction(task: dict[str, Any], version: str) -> bool:
    return any(p.get("model_version") == version for p in task.get("predictions") or [])




def task_sha(task: dict[str, Any]) -> str:
    """The archived audio's sha256 a task carries ("" when it was not pushed by habla-ls)."""
    return str((task.get("data") or {}).get(DATA_SHA256) or "")
