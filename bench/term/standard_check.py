"""Was a promoted version worse on held-out standard speech than the one it replaced, by the gate's own rule?

bench/term's table sets point estimates side by side: a promoted version "is worse" there when its WER on a
standard slice rose by more than the gate's tolerance, max(5 % of the slice's WER, 0.005) — on 390 words a
rise of two words. The gate's regression rule asks for more: worse beyond that tolerance *and* credibly
worse (the paired bootstrap's interval above zero). This script asks the held-out standard sets (Kokoro
and espeak-ng, the same sentences, four voices no training clip uses) that question for every promoted
round: it scores the version replaced and the promoted one on both sets, every utterance kept, and runs
:func:`training.gate.regression_conditions` — the gate's own slices (overall, each family, each voice),
limits and interval — on the pair.

    .venv/bin/python bench/term/standard_check.py --work /work/term-work6 --runs root:uncertainty:2,root:random:2

Each version's scores are cached in ``<home>/held-out-standard/<version>.json`` (whisper-base's once, in
``--work``); the verdicts go to ``<home>/standard-vs-replaced.json``, which bench/term's report reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.term.run import evaluate_alone, test_set_paths  # noqa: E402
from bench.term.term_report import STANDARD_VERDICTS  # noqa: E402

STANDARD = "standard"


def standard_manifests(tests: Path) -> list[Path]:
    paths = test_set_paths(tests)
    return [paths["standard"], paths["standard-espeak"]]


def score(models: Path, version: str, manifests: list[Path], cache: Path) -> dict[str, Any]:
    """One version's report on the two standard sets joined (as the gate's regression set joins families)."""
    if cache.is_file():
        return json.loads(cache.read_text())
    report = evaluate_alone(models / version, {STANDARD: manifests}, label=version, progress=True).to_dict()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(report, ensure_ascii=False) + "\n")
    return report


def judge(replaced: dict[str, Any], promoted: dict[str, Any], *, current: str, candidate: str) -> list[dict[str, Any]]:
    """The gate's regression conditions on the pair: one dict per slice, ``failed`` where the gate would refuse."""
    from training.gate import GateOptions, regression_conditions
    from training.paired_sets import pair_set

    paired = pair_set(STANDARD, replaced, promoted, current=current, candidate=candidate)
    return [
        {"slice": c.name.removeprefix(f"{STANDARD} "), "before": c.current_wer, "after": c.candidate_wer, "point": c.point,
         "low": c.ci_low, "high": c.ci_high, "limit": c.limit, "words": c.words, "decided": c.decided, "failed": not c.passed,
         "verdict": c.verdict}
        for c in regression_conditions(paired, GateOptions())
    ]


def promoted_pairs(home: Path) -> list[tuple[int, str, str]]:
    """(round, replaced, promoted) of every promotion in the run's term log."""
    from habla_ls.term import read_log

    return [(r["round"], r["served_before"], r["served_after"]) for r in read_log(home)
            if r.get("outcome") == "promoted" and r.get("served_before") and r.get("served_after")]


def check_run(home: Path, work: Path, manifests: list[Path]) -> list[dict[str, Any]]:
    def cached(version: str) -> dict[str, Any]:
        # whisper-base is the same model in every run: scored once for all of them.
        where = work if version.startswith("whisper-base") else home
        return score(home / "models", version, manifests, where / "held-out-standard" / f"{version}.json")

    results = [{"round": n, "replaced": old, "promoted": new, "slices": judge(cached(old), cached(new), current=old, candidate=new)}
               for n, old, new in promoted_pairs(home)]
    (home / STANDARD_VERDICTS).write_text(json.dumps(results, indent=1) + "\n")
    return results


def lines(run: str, results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        for s in r["slices"]:
            mark = "FAILS" if s["failed"] else "ok"
            out.append(f"| {run} | {r['round']} | {r['replaced']} -> {r['promoted']} | {s['slice']} | {s['words']} | "
                       f"{s['before']:.3f} -> {s['after']:.3f} | {s['point']:+.3f} ({s['low']:+.3f}..{s['high']:+.3f}) | "
                       f"+{s['limit']:.3f} | {mark} |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="bench/term's --work (its test/ and one home per run)")
    parser.add_argument("--runs", required=True, help="comma-separated <start>:<strategy>:<seed>")
    args = parser.parse_args(argv)
    manifests = standard_manifests(args.work / "test")
    missing = [m for m in manifests if not m.is_file()]
    if missing:
        parser.error(f"no held-out standard set at {missing[0]} (bench/term/run.py makes it)")
    print("| run | round | replaced -> promoted | slice | words | WER | difference (95 % CI) | limit | the gate's rule |")
    print("|---|---:|---|---|---:|---|---|---:|---|")
    for run in (r for r in args.runs.split(",") if r):
        home = args.work / run.replace(":", "-")
        if not home.is_dir():
            print(f"{run}: no run at {home}", file=sys.stderr)
            continue
        print("\n".join(lines(run, check_run(home, args.work, manifests))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
