"""The unlabelled pool: the base model's transcripts and confidences of it (what a selection may know), and
the orders in which each strategy picks its clips."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sync.active_learning import Candidate, rank
from synth.voices import speaker_is_held_out
from training.manifest import split_id

STRATEGIES = ("uncertainty", "random")
SCORE_BATCH = 16  # clips per engine call: fills packed windows, keeps the progress bar moving

log = logging.getLogger("bench.active_learning")


@dataclass
class PoolScore:
    """The base model's view of one pool clip (what the selection may know: no reference text)."""

    key: str
    text: str
    confidence: float
    avg_logprob: float
    duration: float
    reference_text: str | None = None


def _transcribe_pool(model: Path, rows: list[dict[str, Any]], beam_size: int, desc: str) -> list[Any]:
    from ml_backend.audio import decode
    from ml_backend.loading import load_engine

    engine = load_engine(model)
    results = []
    with tqdm(total=len(rows), desc=desc, unit="clip") as bar:
        for start in range(0, len(rows), SCORE_BATCH):
            batch = rows[start : start + SCORE_BATCH]
            results.extend(engine.transcribe([decode(r["audio_path"]) for r in batch], beam_size=beam_size))
            bar.update(len(batch))
    return results


def score_pool(
    home: Path, base: str, rows: list[dict[str, Any]], beam_size: int, reference: str | None
) -> dict[str, PoolScore]:
    """Base-model transcripts and confidences for the pool; cached in the work dir (it is the slow part)."""
    fingerprint = hashlib.sha256(
        json.dumps([split_id(rows), base, beam_size, reference]).encode()
    ).hexdigest()[:16]
    cache = home / f"pool-scores-{fingerprint}.json"
    if cache.is_file():
        return {k: PoolScore(**v) for k, v in json.loads(cache.read_text()).items()}
    started = time.perf_counter()
    transcripts = _transcribe_pool(home / "models" / base, rows, beam_size, f"{base} on the pool")
    references = (
        _transcribe_pool(Path(reference), rows, beam_size, f"reference {Path(reference).name} on the pool")
        if reference else [None] * len(rows)
    )
    scores = {
        row["segment_key"]: PoolScore(
            key=row["segment_key"],
            text=t.text,
            confidence=t.confidence,
            avg_logprob=t.avg_logprob,
            duration=t.audio_seconds,
            reference_text=ref.text if ref is not None else None,
        )
        for row, t, ref in zip(rows, transcripts, references, strict=True)
    }
    log.info("pool scored in %.0f s", time.perf_counter() - started)
    cache.write_text(json.dumps({k: asdict(v) for k, v in scores.items()}, ensure_ascii=False, indent=1) + "\n")
    return scores


def selection_orders(rows: list[dict[str, Any]], scores: dict[str, PoolScore], seeds: list[int]) -> dict[str, Any]:
    """The uncertainty ranking (one order) and one random permutation per seed, as lists of segment keys."""
    candidates = [
        Candidate(
            key=row["segment_key"],
            task_id=index,
            session=row["session"],
            speaker=row["speaker"],
            duration=scores[row["segment_key"]].duration,
            text=scores[row["segment_key"]].text,
            confidence=scores[row["segment_key"]].confidence,
            reference_text=scores[row["segment_key"]].reference_text,
        )
        for index, row in enumerate(rows)
    ]
    keys = [row["segment_key"] for row in rows]
    return {
        "uncertainty": [r.candidate.key for r in rank(candidates)],
        "random": {seed: random.Random(seed).sample(keys, len(keys)) for seed in seeds},
    }


def base_wer_on(rows: list[dict[str, Any]], scores: dict[str, PoolScore]) -> float:
    """How wrong the base model is on ``rows`` (known only afterwards: the selection never sees it)."""
    from training.metrics import corpus_wer

    return corpus_wer([r["transcript"] for r in rows], [scores[r["segment_key"]].text for r in rows])


def held_out_speakers(pool: list[dict[str, Any]]) -> list[str]:
    """The pool's speakers that are held-out voices: training on them would judge the regression set on
    voices the model has heard."""
    return sorted({row["speaker"] for row in pool if speaker_is_held_out(row["speaker"])})
