"""WER and CER of a corpus: one alignment per corpus and normalisation level, every figure derived from it.

For each level of :data:`training.normalize.LEVELS` (raw, normalised, accent-insensitive) the whole
corpus is aligned once with jiwer (words, and characters). Overall figures, the breakdowns by session,
speaker and loudness, and the worst utterances are all sums of the per-utterance edit counts of that
one alignment, so the numbers can never disagree with each other.

Corpus WER is the sum of errors over the sum of reference words (not a mean of per-utterance WERs),
like jiwer and every ASR paper. Each utterance keeps its own normalised-level counts (substitutions,
deletions, insertions, reference words) and slice keys (session, speaker, voice family, loudness
class), so the promotion gate can pair two versions clip by clip and re-sum any resample.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jiwer

from synth.voices import family_of
from training.normalize import LEVELS

DEFAULT_QUIET_DBFS = -30.0  # speech below this active level counts as "quiet" (see rms_dbfs)
PRIMARY_LEVEL = "normalised"


@dataclass(frozen=True)
class Utterance:
    """One reference/hypothesis pair and what it is grouped by."""

    key: str
    reference: str
    hypothesis: str
    session: str = ""
    speaker: str = ""
    loudness_dbfs: float | None = None


@dataclass(frozen=True)
class ErrorCounts:
    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def reference_length(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def rate(self) -> float:
        """Errors per reference unit; an empty reference scores 0 if the hypothesis is empty too, else 1."""
        if self.reference_length == 0:
            return 0.0 if self.insertions == 0 else 1.0
        return self.errors / self.reference_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.hits + other.hits,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors, "reference_length": self.reference_length, "rate": self.rate}


@dataclass(frozen=True)
class GroupScore:
    """Figures of a subset of the corpus (a session, a speaker, a loudness class, or all of it)."""

    name: str
    utterances: int
    words: ErrorCounts
    chars: ErrorCounts

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def cer(self) -> float:
        return self.chars.rate

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "utterances": self.utterances,
            "wer": self.wer,
            "cer": self.cer,
            "words": self.words.to_dict(),
            "chars": self.chars.to_dict(),
        }


@dataclass(frozen=True)
class UtteranceScore:
    """One scored utterance with everything the promotion gate pairs and slices it by.

    The gate compares two versions utterance by utterance and re-sums errors and reference words over
    resamples, so the report keeps the normalised-level edit counts, not just a per-utterance rate.
    """

    key: str
    reference: str
    hypothesis: str
    session: str
    speaker: str
    loudness_dbfs: float | None
    words: ErrorCounts  # at the primary (normalised) level
    chars: ErrorCounts
    loudness: str = "unknown"  # loudness_class() with the report's quiet threshold

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def family(self) -> str:
        return family_of(self.speaker)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "reference": self.reference,
            "hypothesis": self.hypothesis,
            "session": self.session,
            "speaker": self.speaker,
            "family": self.family,
            "loudness_dbfs": self.loudness_dbfs,
            "loudness": self.loudness,
            "wer": self.wer,
            "word_errors": self.words.errors,
            "substitutions": self.words.substitutions,
            "deletions": self.words.deletions,
            "insertions": self.words.insertions,
            "reference_words": self.words.reference_length,
            "cer": self.chars.rate,
        }


@dataclass
class CorpusReport:
    utterances: int
    levels: dict[str, GroupScore]  # level name -> whole-corpus figures
    by_session: dict[str, GroupScore]
    by_speaker: dict[str, GroupScore]
    by_loudness: dict[str, GroupScore]
    worst: list[UtteranceScore]
    per_utterance: list[UtteranceScore] = field(repr=False)
    by_family: dict[str, GroupScore] = field(default_factory=dict)
    quiet_threshold_dbfs: float = DEFAULT_QUIET_DBFS

    @property
    def wer(self) -> float:
        """The headline figure: normalised WER."""
        return self.levels[PRIMARY_LEVEL].wer

    @property
    def cer(self) -> float:
        return self.levels[PRIMARY_LEVEL].cer

    def to_dict(self, *, include_utterances: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "utterances": self.utterances,
            "wer": {name: score.wer for name, score in self.levels.items()},
            "cer": {name: score.cer for name, score in self.levels.items()},
            "levels": {name: score.to_dict() for name, score in self.levels.items()},
            "by_session": {k: v.to_dict() for k, v in self.by_session.items()},
            "by_speaker": {k: v.to_dict() for k, v in self.by_speaker.items()},
            "by_loudness": {k: v.to_dict() for k, v in self.by_loudness.items()},
            "by_family": {k: v.to_dict() for k, v in self.by_family.items()},
            "quiet_threshold_dbfs": self.quiet_threshold_dbfs,
            "worst": [u.to_dict() for u in self.worst],
        }
        if include_utterances:
            data["per_utterance"] = [u.to_dict() for u in self.per_utterance]
        return data


def _counts_from_alignment(chunks: Iterable[jiwer.AlignmentChunk]) -> ErrorCounts:
    hits = subs = dels = ins = 0
    for chunk in chunks:
        ref_span = chunk.ref_end_idx - chunk.ref_start_idx
        if chunk.type == "equal":
            hits += ref_span
        elif chunk.type == "substitute":
            subs += ref_span
        elif chunk.type == "delete":
            dels += ref_span
        elif chunk.type == "insert":
            ins += chunk.hyp_end_idx - chunk.hyp_start_idx
    return ErrorCounts(hits, subs, dels, ins)


def align_level(
    references: Sequence[str], hypotheses: Sequence[str], level: str, *, characters: bool = True
) -> tuple[list[ErrorCounts], list[ErrorCounts]]:
    """Per-utterance (word counts, char counts) from one corpus-wide alignment at ``level``.

    With ``characters=False`` the character alignment is skipped and its counts are empty.
    """
    transform = LEVELS[level]
    refs = [transform(r or "") for r in references]
    hyps = [transform(h or "") for h in hypotheses]
    words = [_counts_from_alignment(a) for a in jiwer.process_words(refs, hyps).alignments]
    if not characters:
        return words, [ErrorCounts() for _ in words]
    chars = [_counts_from_alignment(a) for a in jiwer.process_characters(refs, hyps).alignments]
    return words, chars


def _group(name: str, members: Sequence[int], words: Sequence[ErrorCounts], chars: Sequence[ErrorCounts]) -> GroupScore:
    total_words, total_chars = ErrorCounts(), ErrorCounts()
    for i in members:
        total_words += words[i]
        total_chars += chars[i]
    return GroupScore(name, len(members), total_words, total_chars)


def loudness_class(dbfs: float | None, threshold: float = DEFAULT_QUIET_DBFS) -> str:
    if dbfs is None:
        return "unknown"
    return "quiet" if dbfs < threshold else "normal"


def score_corpus(
    utterances: Sequence[Utterance],
    *,
    quiet_threshold_dbfs: float = DEFAULT_QUIET_DBFS,
    worst_n: int = 10,
) -> CorpusReport:
    """Every figure of a corpus: three levels overall, breakdowns and worst utterances (normalised)."""
    if not utterances:
        raise ValueError("no utterances to score")
    references = [u.reference for u in utterances]
    hypotheses = [u.hypothesis for u in utterances]
    aligned = {level: align_level(references, hypotheses, level) for level in LEVELS}
    everyone = range(len(utterances))
    levels = {level: _group(level, everyone, *aligned[level]) for level in LEVELS}

    words, chars = aligned[PRIMARY_LEVEL]
    kinds = ("session", "speaker", "loudness", "family")
    groups: dict[str, dict[str, list[int]]] = {kind: defaultdict(list) for kind in kinds}
    loudness = [loudness_class(u.loudness_dbfs, quiet_threshold_dbfs) for u in utterances]
    for i, u in enumerate(utterances):
        groups["session"][u.session or "(none)"].append(i)
        groups["speaker"][u.speaker or "(none)"].append(i)
        groups["loudness"][loudness[i]].append(i)
        groups["family"][family_of(u.speaker)].append(i)
    breakdown = {
        kind: {name: _group(name, members, words, chars) for name, members in sorted(by.items())}
        for kind, by in groups.items()
    }

    scored = [
        UtteranceScore(u.key, u.reference, u.hypothesis, u.session, u.speaker, u.loudness_dbfs, words[i], chars[i], loudness[i])
        for i, u in enumerate(utterances)
    ]
    worst = sorted((s for s in scored if s.words.errors), key=lambda s: (-s.words.errors, -s.wer, s.key))[:worst_n]
    return CorpusReport(
        utterances=len(utterances),
        levels=levels,
        by_session=breakdown["session"],
        by_speaker=breakdown["speaker"],
        by_loudness=breakdown["loudness"],
        worst=worst,
        by_family=breakdown["family"],
        per_utterance=scored,
        quiet_threshold_dbfs=quiet_threshold_dbfs,
    )


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str], level: str = PRIMARY_LEVEL) -> float:
    """Just the WER at one level (used for validation during training)."""
    words, _ = align_level(references, hypotheses, level, characters=False)
    total = ErrorCounts()
    for counts in words:
        total += counts
    return total.rate
