"""How many of a round's wrong words the page marked: the threshold set on the pages to be corrected, or
carried over from the corrections made before.

For every round of a finished bench/term run, the pages the annotator corrected were prefilled by the
version served when the round ranked. This script rebuilds what the page's word checks knew then (a
scorer fitted on the tasks corrected in earlier rounds, each with the words of whisper-base and of the
version that prefilled it, as :func:`habla_ls.word_marks.measure` pairs them) and marks that version's
words on the round's corrected tasks two ways:

    carried   the cut chosen on the earlier corrections (the most wrong words with at most a quarter of
              their words marked: :func:`training.word_checks.choose_threshold`), the page's rule until
              2026-12-08
    page      the cut that marks a quarter of the prefilling version's words on the next ``--look-ahead``
              tasks in the round's order (default ``LOOK_AHEAD_TASKS``; ``all``: every task still
              unlabelled when the round ranked), :func:`training.word_checks.page_threshold`, the rule since

and prints, per rule, the share of the round's wrong words marked against the share of its words marked.
Below 200 corrected words both rules read the model's own doubt (1 - its probability); ``carried`` then is
the old fixed 0.5. Every word comes from the run's prediction cache (what the page was prefilled with), the
verdicts from the pool's references, so nothing is decoded.

    .venv/bin/python bench/term/page_marks.py --work /work/term-work8 --runs root:diverse:3,root:random:3
    .venv/bin/python bench/term/page_marks.py --work /work/term-work8 --runs root:diverse:3 --look-ahead all
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from habla_ls.word_marks import LOOK_AHEAD_TASKS, version_words  # noqa: E402
from ml_backend.prediction_cache import PredictionCache, cache_path  # noqa: E402
from sync.ledger import Ledger  # noqa: E402
from sync.page_checks import PageWord  # noqa: E402
from training.word_checks import (  # noqa: E402
    DEFAULT_THRESHOLD,
    CheckedTranscript,
    choose_threshold,
    fit_checks,
    mark_point,
    page_threshold,
)

BASE = "whisper-base-v1"


def round_records(home: Path) -> list[dict[str, Any]]:
    """The run's rounds; a round-1 record that lost its keys on a resume (bench code before 57be249) gets
    them back: the corrections no later round lists."""
    records = [json.loads(line) for line in (home / "reports" / "term.jsonl").read_text().splitlines() if line.strip()]
    listed = {k for r in records for k in r.get("corrected_now") or []}
    manifest = home / "datasets" / "manifest.jsonl"
    if records and records[0]["round"] == 1 and not records[0].get("corrected_now") and manifest.is_file():
        keys = [json.loads(line)["segment_key"] for line in manifest.read_text().splitlines() if line.strip()]
        records[0]["corrected_now"] = [k for k in keys if k not in listed]
    return records


def measure_run(home: Path, references: dict[str, str], look_ahead: int | None = LOOK_AHEAD_TASKS) -> list[dict[str, Any]]:
    """``look_ahead``: how many of the round's tasks set the page's cut (None: every unlabelled task)."""
    with Ledger(home / "ledger.sqlite3") as ledger:
        sha = {r.key: r.sha256 for r in ledger.segments()}
    words: dict[str, dict[str, list[PageWord]]] = {}

    def of(version: str) -> dict[str, list[PageWord]]:
        if version not in words:
            cache = PredictionCache(cache_path(home))
            try:
                words[version] = version_words(home / "models", version, sorted(set(sha.values())), cache)
            finally:
                cache.close()
        return words[version]

    records = round_records(home)
    corrected_in = {k: (r["round"], r["served_before"]) for r in records for k in r.get("corrected_now") or []}
    out = []
    for record in records:
        version, queue = record["served_before"], record.get("corrected_now") or []
        earlier = [k for k, (n, _) in corrected_in.items() if n < record["round"]]
        learnt = [CheckedTranscript.from_words(f"{k}/{v}", of(v)[sha[k]], references[k])
                  for k in earlier for v in sorted({BASE, corrected_in[k][1]}) if of(v).get(sha[k])]
        fit = fit_checks(learnt)  # below 200 words no scorer: its scores are the model's own doubt

        judged = [(k, of(version)[sha[k]]) for k in queue if of(version).get(sha[k])]
        if not judged:
            continue
        if fit.calibrated:
            carried = choose_threshold([(p, bad) for s in learnt for p, bad in zip(fit.learnt_scores(s), s.wrong, strict=True)]).threshold
        else:
            carried = 1.0 - DEFAULT_THRESHOLD
        if look_ahead is None:
            unlabelled = [of(version)[sha[k]] for k in sha if k not in set(earlier) and of(version).get(sha[k])]
        else:
            unlabelled = [w for _, w in judged[:look_ahead]]
        own = page_threshold([p for w in unlabelled for p in fit.word_scores(w)])
        samples = [CheckedTranscript.from_words(k, w, references[k]) for k, w in judged]
        pairs = [(p, bad) for (_, w), s in zip(judged, samples, strict=True) for p, bad in zip(fit.word_scores(w), s.wrong, strict=True)]
        row = {"round": record["round"], "version": version, "tasks": len(judged), "words": len(pairs),
               "wrong": sum(bad for _, bad in pairs), "learnt_from": fit.words if fit.calibrated else 0}
        for name, cut in (("carried", carried), ("page", own)):
            point = mark_point(pairs, cut)
            row[name] = {"threshold": round(cut, 4), "recall": round(point.recall, 4), "marked": round(point.marked_share, 4)}
        out.append(row)
    return out


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| run | round | prefilled by | corrected tasks (words, wrong) | learnt from (words) | carried cut: wrong / all marked | "
        "page's cut: wrong / all marked |",
        "|---|---:|---|---|---:|---|---|",
    ]
    for run, rows in results.items():
        for r in rows:
            cells = [f"{r[k]['threshold']:.2f}: {100 * r[k]['recall']:.1f} % / {100 * r[k]['marked']:.1f} %" for k in ("carried", "page")]
            lines.append(f"| `{run}` | {r['round']} | {r['version']} | {r['tasks']} ({r['words']}, {r['wrong']}) | "
                         f"{r['learnt_from'] or 'none: own doubt'} | "
                         f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="bench/term's --work (its pool/ and one home per run)")
    parser.add_argument("--runs", required=True, help="comma-separated runs, e.g. root:diverse:3,root:random:3")
    parser.add_argument("--look-ahead", default=str(LOOK_AHEAD_TASKS),
                        help=f"tasks in the round's order that set the page's cut (default {LOOK_AHEAD_TASKS}; 'all': every unlabelled task)")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args(argv)
    references = json.loads((args.work / "pool" / "references.json").read_text())
    look_ahead = None if args.look_ahead == "all" else int(args.look_ahead)
    results = {run: measure_run(args.work / run.replace(":", "-"), references, look_ahead) for run in args.runs.split(",")}
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
