"""Evaluation reports read as paired sets: two versions' utterances matched by key, and their slices.

Both versions must have been scored on the same utterances (``habla-ls evaluate`` keeps every utterance
in ``reports/<version>.json`` with its normalised-level error counts); they are matched by utterance
key, and reports measured on different sets are refused (:class:`GateError`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from synth.voices import ESPEAK, FAMILIES, KOKORO, family_of

TEST_SET = "test"
REGRESSION_SET = "regression"
# How a report's clips were decoded: each alone (evaluation's way since clips decoded in shared windows were
# found to change with their window-mates), or packed (every report written before; see training/evaluate.py).
DECODED_ALONE = "alone"
DECODED_PACKED = "packed"

ESPEAK_ONLY_NOTE = (
    "Only espeak-ng voices judged standard speech: Kokoro (the `synth` extra) was absent, "
    "so no natural voice was in the regression set."
)


class GateError(ValueError):
    """Two reports cannot be compared (different sets, missing figures); ``needs_evaluation`` says if
    evaluating both versions together would fix it."""

    def __init__(self, message: str, *, needs_evaluation: bool = False) -> None:
        super().__init__(message)
        self.needs_evaluation = needs_evaluation


@dataclass
class PairedSet:
    """One evaluation set scored by both versions, utterance by utterance in the same order."""

    name: str
    keys: list[str]
    sessions: np.ndarray
    speakers: np.ndarray
    families: np.ndarray
    loudness: np.ndarray
    errors_current: np.ndarray
    errors_candidate: np.ndarray
    words: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, mask: np.ndarray) -> PairedSet:
        return PairedSet(
            self.name,
            [k for k, keep in zip(self.keys, mask, strict=True) if keep],
            self.sessions[mask],
            self.speakers[mask],
            self.families[mask],
            self.loudness[mask],
            self.errors_current[mask],
            self.errors_candidate[mask],
            self.words[mask],
        )


def _records(report: Mapping[str, Any], name: str, label: str) -> list[Mapping[str, Any]]:
    sets = report.get("sets") or {}
    if name not in sets:
        raise GateError(f"no {name} figures for {label}: run `habla-ls evaluate`", needs_evaluation=True)
    records = sets[name].get("per_utterance")
    if records is None:
        raise GateError(f"the {name} report of {label} keeps no per-utterance records: re-run `habla-ls evaluate`", needs_evaluation=True)
    if records and "reference_words" not in records[0]:
        raise GateError(
            f"the {name} report of {label} predates per-utterance error counts: re-run `habla-ls evaluate`", needs_evaluation=True
        )
    return records


def _errors(record: Mapping[str, Any]) -> int:
    return int(record["substitutions"]) + int(record["deletions"]) + int(record["insertions"])


def _family(record: Mapping[str, Any]) -> str:
    return str(record.get("family") or family_of(str(record.get("speaker") or "")))


def _occurrence_keys(records: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    # A key may repeat within a set (the same clip listed twice); pair the n-th with the n-th.
    seen: Counter[str] = Counter()
    keys = []
    for r in records:
        key = str(r["key"])
        keys.append((key, seen[key]))
        seen[key] += 1
    return keys


def pair_set(
    name: str, current_report: Mapping[str, Any], candidate_report: Mapping[str, Any], *, current: str = "current", candidate: str = "candidate"
) -> PairedSet:
    """Match the two versions' utterances of set ``name`` by key; :class:`GateError` if they differ."""
    cur_records = _records(current_report, name, current)
    cand_records = _records(candidate_report, name, candidate)
    cur_id = (current_report.get("set_ids") or {}).get(name)
    cand_id = (candidate_report.get("set_ids") or {}).get(name)
    if cur_id and cand_id and cur_id != cand_id:
        which = "test splits" if name == TEST_SET else f"{name} sets"
        raise GateError(
            f"{current} and {candidate} were measured on different {which} ({cur_id} vs {cand_id}): "
            f"re-evaluate both (`habla-ls evaluate {candidate} {current}`)",
            needs_evaluation=True,
        )
    by_key = dict(zip(_occurrence_keys(cand_records), cand_records, strict=True))
    cur_keys = _occurrence_keys(cur_records)
    only_current = [k for k in cur_keys if k not in by_key]
    only_candidate = set(by_key) - set(cur_keys)
    if only_current or only_candidate:
        example = (only_current or sorted(only_candidate))[0][0]
        raise GateError(
            f"{current} and {candidate} scored different {name} clips ({len(only_current)} only in {current}, "
            f"{len(only_candidate)} only in {candidate}, e.g. {example}): re-evaluate both together",
            needs_evaluation=True,
        )
    paired = [(c, by_key[k]) for c, k in zip(cur_records, cur_keys, strict=True)]
    for c, d in paired:
        if int(c["reference_words"]) != int(d["reference_words"]) or c.get("reference") != d.get("reference"):
            raise GateError(
                f"{name} clip {c['key']} has different references in the two reports: re-evaluate both together",
                needs_evaluation=True,
            )
    return PairedSet(
        name,
        [str(c["key"]) for c, _ in paired],
        np.array([str(c.get("session") or "(none)") for c, _ in paired], dtype=object),
        np.array([str(c.get("speaker") or "(none)") for c, _ in paired], dtype=object),
        np.array([_family(c) for c, _ in paired], dtype=object),
        np.array([str(c.get("loudness") or "unknown") for c, _ in paired], dtype=object),
        np.array([_errors(c) for c, _ in paired], dtype=np.float64),
        np.array([_errors(d) for _, d in paired], dtype=np.float64),
        np.array([int(c["reference_words"]) for c, _ in paired], dtype=np.float64),
    )


def single_set(name: str, report: Mapping[str, Any], label: str = "this version") -> PairedSet:
    """One version's set as a "pair" with a perfect reference (zero errors): intervals of its own WER."""
    paired = pair_set(name, report, report, current=label, candidate=label)
    paired.errors_current = np.zeros_like(paired.errors_candidate)
    return paired


def _voice_or_speaker(speaker: str) -> str:
    return "voice" if family_of(speaker) in FAMILIES else "speaker"


def regression_slices(paired: PairedSet) -> list[tuple[str, np.ndarray]]:
    """(name, mask) of every slice of the regression set: overall, families, voices/speakers, quiet.

    A slice with exactly the members of an earlier one is left out (a set of one family would
    otherwise be judged twice on the same clips).
    """
    everyone = np.ones(len(paired), dtype=bool)
    candidates = [("overall", everyone)]
    candidates += [(f"family {f}", paired.families == f) for f in sorted(set(paired.families))]
    candidates += [(f"{_voice_or_speaker(s)} {s}", paired.speakers == s) for s in sorted(set(paired.speakers))]
    if (paired.loudness == "quiet").any():
        candidates.append(("quiet speech", paired.loudness == "quiet"))
    slices: list[tuple[str, np.ndarray]] = []
    for name, mask in candidates:
        if mask.any() and not any(np.array_equal(mask, kept) for _, kept in slices):
            slices.append((name, mask))
    return slices


def espeak_only(paired_or_records: PairedSet | Sequence[Mapping[str, Any]]) -> bool:
    """True when standard speech was judged by espeak-ng voices and no Kokoro voice."""
    if isinstance(paired_or_records, PairedSet):
        families = set(paired_or_records.families)
    else:
        families = {_family(r) for r in paired_or_records}
    return ESPEAK in families and KOKORO not in families


def report_notes(report: Mapping[str, Any]) -> list[str]:
    """Lines that must head every Markdown report made from ``report`` (a ``reports/<v>.json`` dict)."""
    regression = (report.get("sets") or {}).get(REGRESSION_SET) or {}
    records = regression.get("per_utterance") or []
    return [ESPEAK_ONLY_NOTE] if records and espeak_only(records) else []
