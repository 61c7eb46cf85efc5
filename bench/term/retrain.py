"""Train one round of a finished `bench/term` run again with other training options, and score it the same way.

A probe of how to train across rounds without running a whole term: copies the first ``--corrections``
corrections of a run's home (in the order they were made, so exactly what that round trained on; the
run's session splits and replay set come along), trains from whisper-base with ``habla-ls train
--start-from root`` and the options given after ``--``, and scores the new version on the term's held-out
sets (Kokoro accent and standard; each clip alone, beam 5, as `run.py` scores).

    .venv/bin/python bench/term/retrain.py --run /work/term-work3/root-uncertainty-1 --corrections 40 \\
        --out /work/replay-exp/r050-s1 -- --seed 1 --replay-ratio 0.5

Prints the held-out WERs as JSON and keeps them in ``--out``/held-out-scores.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.term.run import score_kokoro  # noqa: E402

BASE = "whisper-base-v1"


def copy_round(run: Path, corrections: int, out: Path) -> None:
    """A home holding the run's first ``corrections`` corrections, its splits, replay and regression sets, and whisper-base."""
    rows = [json.loads(line) for line in (run / "datasets" / "manifest.jsonl").read_text().splitlines() if line.strip()]
    if len(rows) < corrections:
        raise SystemExit(f"{run}: {len(rows)} corrections, fewer than --corrections {corrections}")
    rows.sort(key=lambda r: r["annotated_at"])
    (out / "datasets").mkdir(parents=True)
    (out / "datasets" / "manifest.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:corrections]))
    shutil.copy2(run / "datasets" / "splits.json", out / "datasets" / "splits.json")
    for name in ("regression", "replay"):
        shutil.copytree(run / "datasets" / name, out / "datasets" / name, copy_function=os.link)
    shutil.copytree(run / "models" / BASE, out / "models" / BASE)
    (out / "models" / "CURRENT").write_text(BASE + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a bench/term run's home (<work>/<start>-<strategy>-<seed>)")
    parser.add_argument("--corrections", type=int, required=True, help="train on the first N corrections of the run")
    parser.add_argument("--out", type=Path, required=True, help="a new home for the copy and the version trained")
    parser.add_argument("--tests", type=Path, default=None, help="the held-out sets' root (default: <run>/../test)")
    parser.add_argument("train_options", nargs="*", help="after --: options of `habla-ls train`")
    args = parser.parse_args(argv)
    if not (args.out / "models" / "habla-v1").is_dir():
        if args.out.exists():
            raise SystemExit(f"{args.out} exists without a trained habla-v1: remove it first")
        copy_round(args.run, args.corrections, args.out)
        command = [str(Path(sys.executable).with_name("habla-ls")), "--home", str(args.out), "train", "--start-from", "root",
                   *args.train_options]
        subprocess.run(command, check=True)  # offline: run.py sets HF_HUB_OFFLINE, the child inherits it
    print(json.dumps(score_kokoro(args.out, "habla-v1", args.tests or args.run.parent / "test")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
