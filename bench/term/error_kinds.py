"""What a version's remaining errors on the term's held-out accent set are, word by word.

Every word error of the normalised alignment (the one WER counts) falls in one kind:

    number        the word with or without a final -s (*la* for *las*, *sabados* for *sábados* aside):
                  the accent's aspirated -s, which the model has to restore from the context
    spelt as said the word heard right and written as the accent says it: the same once b/v, rr/r, ll/y,
                  h, seseo (z, c before e/i), an elided d between vowels and a final -s/-d/-n are
                  levelled (*vario* for *barrio*, *vendeores*, *plasuela*)
    accent mark   the same letters, another written accent
    misheard      any other substitution
    inserted / dropped   a word only the transcript / only the reference has

A fine-tune on the user's corrections can learn the first two for the words it saw corrected; on
sentences no correction contained it has to generalise them. Each clip is decoded alone, as `run.py`
scores (CTranslate2 int8, beam 5):

    .venv/bin/python bench/term/error_kinds.py --tests /work/term-work6/test \\
        /work/term-work6/root-random-2/models/whisper-base-v1 /work/term-work6/root-random-2/models/habla-v3

Prints one row per version (errors of each kind per reference word, so the kinds add up to the WER).
With ``--references <pool>/references.json`` (the pool's transcripts: every correction a term can get),
also the share of the reference words substituted or dropped among the words some pool transcript
contains and among those none does: what a fine-tune on the corrections fixes for the words it saw, and
for the rest.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training.normalize import FoldAccents  # noqa: E402

_fold_accents = FoldAccents().process_string  # á -> a, ü -> u; ñ stays a letter of its own
KINDS = ("number", "spelt as said", "accent mark", "misheard", "inserted", "dropped")


def _as_said(word: str) -> str:
    """The word with the accent's spelling differences levelled (see the module's doc)."""
    word = _fold_accents(word).replace("v", "b").replace("rr", "r").replace("ll", "y").replace("h", "")
    word = re.sub(r"c(?=[ei])", "s", word).replace("z", "s").replace("qu", "k").replace("c", "k")
    word = re.sub(r"(?<=[aeiou])d(?=[aeiou])", "", word)
    word = re.sub(r"([aeiou])\1+", r"\1", word)  # madrugada -> madrugaa -> madruga, as *madrugá*
    return re.sub(r"[sdn]+$", "", word)


def substitution_kind(reference: str, hypothesis: str) -> str:
    """The kind of one substituted word (both normalised)."""
    ref, hyp = _fold_accents(reference), _fold_accents(hypothesis)
    if ref == hyp:
        return "accent mark"
    if ref.rstrip("s") == hyp.rstrip("s"):
        return "number"
    if _as_said(reference) == _as_said(hypothesis):
        return "spelt as said"
    return "misheard"


@dataclass(frozen=True)
class Alignment:
    """One utterance's normalised words and their alignment, computed once for every figure read off it."""

    reference: list[str]
    hypothesis: list[str]
    chunks: list[Any]  # jiwer's AlignmentChunk (empty when either side has no words)

    @classmethod
    def of(cls, reference: str, hypothesis: str) -> Alignment:
        import jiwer

        from training.normalize import normalise

        ref, hyp = normalise(reference).split(), normalise(hypothesis).split()
        chunks = jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0] if ref and hyp else []
        return cls(ref, hyp, chunks)


def error_kinds(alignment: Alignment) -> collections.Counter[str]:
    """Word errors of one utterance by kind; their sum is the utterance's word edit count."""
    ref, hyp = alignment.reference, alignment.hypothesis
    if not ref or not hyp:  # jiwer aligns nothing against an empty side: every word of the other is an error
        return +collections.Counter({"inserted": len(hyp), "dropped": len(ref)})
    kinds: collections.Counter[str] = collections.Counter()
    for chunk in alignment.chunks:
        if chunk.type == "substitute":
            for a, b in zip(ref[chunk.ref_start_idx:chunk.ref_end_idx], hyp[chunk.hyp_start_idx:chunk.hyp_end_idx], strict=True):
                kinds[substitution_kind(a, b)] += 1
        elif chunk.type == "insert":
            kinds["inserted"] += chunk.hyp_end_idx - chunk.hyp_start_idx
        elif chunk.type == "delete":
            kinds["dropped"] += chunk.ref_end_idx - chunk.ref_start_idx
    return kinds


def missed_words(alignment: Alignment) -> list[tuple[str, bool]]:
    """Each reference word and whether the hypothesis substituted or dropped it."""
    missed = [not alignment.hypothesis] * len(alignment.reference)
    for chunk in alignment.chunks:
        if chunk.type in ("substitute", "delete"):
            missed[chunk.ref_start_idx:chunk.ref_end_idx] = [True] * (chunk.ref_end_idx - chunk.ref_start_idx)
    return list(zip(alignment.reference, missed, strict=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=Path, required=True, help="the term's held-out sets (run.py's <work>/test)")
    parser.add_argument("--references", type=Path, help="the pool's references.json: split the errors by words it has or not")
    parser.add_argument("versions", nargs="+", type=Path, help="version dirs (<run>/models/<version>)")
    args = parser.parse_args(argv)

    from bench.term.run import evaluate_alone, make_test_sets
    from training.normalize import normalise

    manifest = make_test_sets(args.tests)["accent"]
    pool: set[str] = set()
    if args.references is not None:
        import json

        pool = {w for text in json.loads(args.references.read_text()).values() for w in normalise(text).split()}
    split = ["words in the pool: missed", "words not in it: missed"] if pool else []
    print(f"| version | words | WER | {' | '.join([*KINDS, *split])} |")
    print("|---|---:|---:|" + "---:|" * (len(KINDS) + len(split)))
    for version in args.versions:
        evaluation = evaluate_alone(version, {"accent": [manifest]}, label=version.name)
        report = evaluation.reports["accent"]
        kinds: collections.Counter[str] = collections.Counter()
        seen: collections.Counter[tuple[bool, bool]] = collections.Counter()  # (in the pool, missed) -> words
        words = 0
        for utterance in report.per_utterance:
            alignment = Alignment.of(utterance.reference, utterance.hypothesis)
            kinds += error_kinds(alignment)
            words += len(alignment.reference)
            seen.update((word in pool, missed) for word, missed in missed_words(alignment))
        cells = " | ".join(f"{kinds[k] / words:.3f} ({kinds[k]})" for k in KINDS)
        for known in ([True, False] if pool else []):
            total = seen[known, True] + seen[known, False]
            cells += f" | {seen[known, True] / max(1, total):.3f} ({seen[known, True]}/{total})"
        print(f"| {version.parent.parent.name}/{version.name} | {words} | {report.wer:.3f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
