"""The recipe benchmark: which training recipe learns the accent and keeps standard Spanish.

Reads the corpora of ``bench/quality/make_corpus.py``: ``train/`` (accented classroom sentences, training
voices), ``test_accent/`` and ``test_standard/`` (everyday sentences, accented and standard, spoken by the
held-out voices: no variant trained on their sentences or voices). Registers whisper-base in a work home
and, for every seed, fine-tunes with ``training.train.train`` (the code of ``habla-ls train``):

    base-recipe              the user's accented clips only (recipe "plain")
    rehearsal                plus standard-Spanish replay clips (training/replay_set.py), REPLAY_RATIO of them:
                             the default recipe of ``habla-ls train`` (bench/README.md's recipe tables)
    interpolation            base-recipe's weights, interpolated towards whisper-base (training/interpolate.py)
    rehearsal+interpolation  rehearsal's weights, interpolated

The two interpolation variants start from the same fine-tuned weights as their plain counterparts
(``training.train.interpolate_version``: the choice ``habla-ls train --interpolation auto`` makes), so
they cost a weight search, not a second training, and differ from them by the interpolation alone.
Every version (and whisper-base once) is scored by the serving engine (CTranslate2 int8, beam 5), each clip
decoded on its own (``--scoring alone``), as Habla transcribes a segment: whisperx decodes one ASR input per
call. ``--scoring packed`` scores with the backend's packing instead (16 clips per engine call sharing 30-s
windows), which is faster but makes a clip's transcript depend on its window-mates: the same two models
moved by up to 0.06 WER between groupings (bench/README.md's scoring table), more than recipes differ.

Training clips: at most 300 in all (issue 13), replay clips included: a rehearsal run takes fewer
accented clips (300 / (1 + ratio)) from the same seeded order, so its accented clips are a subset of
base-recipe's. ``--budget-excludes-replay`` counts accented clips only.

Target (issue 13): mean of the seeds, accent WER at least -50 % relative to whisper-base, standard WER
no more than +2 % relative.

    .venv/bin/python bench/quality/make_corpus.py
    .venv/bin/python bench/quality/run.py --seeds 0,1                # the four variants, two seeds
    .venv/bin/python bench/quality/run.py --variants rehearsal --seeds 0

Resumable: each finished training and each variant/seed result is a JSON file under ``--out``/runs/;
a re-run skips those whose settings are unchanged, and a training interrupted with the same settings
continues from its last epoch checkpoint, so an interrupted benchmark continues where it stopped. Writes ``--out``/quality-recipes.{json,md,png} (mean and range over seeds, relative to
whisper-base).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.quality.summary import chart, markdown, summarise  # noqa: E402
from bench.quality.variants import (  # noqa: E402
    BATCH_NOTE,
    MAX_TRAIN_CLIPS,
    SCORINGS,
    VARIANTS,
    ensure_base,
    read_json,
    run_variant,
    score_version,
    write_json,
)
from training.manifest import read_manifest, split_id  # noqa: E402

DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "results" / "quality-corpus"
DEFAULT_WORK = Path(__file__).resolve().parents[1] / "results" / "quality-run"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "quality"


@contextlib.contextmanager
def training_lines(enabled: bool) -> Iterator[None]:
    """With --quiet, print training's readable lines (``training.progress.ReadableLog``) with the time.

    Without bars an hour-long training would otherwise print nothing at all between its start and its
    result; the lines go to stdout only, not through the root logger, so library INFO chatter stays off.
    """
    if not enabled:
        yield
        return
    logger = logging.getLogger("training.train")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from training.options import REPLAY_RATIO

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="make_corpus.py's --out")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="a HABLA_LS_HOME for the runs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results: runs/*.json, quality-recipes.{json,md,png}")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    parser.add_argument("--base", type=Path, default=None, help="a transformers Whisper dir instead of the packaged whisper-base")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop early (smoke runs)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=None, help="default: 2 x rank")
    parser.add_argument("--target-modules", default=None, help="LoRA target modules, comma-separated (default q_proj,v_proj)")
    parser.add_argument("--frozen-encoder-layers", type=int, default=None,
                        help="encoder layers frozen and computed once (default: TrainOptions')")
    parser.add_argument("--lora-scope", default=None, help="encoder+decoder, encoder or decoder (default: TrainOptions')")
    parser.add_argument("--mel-warp", type=float, default=None, help="vocal-tract-length perturbation width (default: TrainOptions')")
    parser.add_argument("--pack-fraction", type=float, default=None,
                        help="share of training clips trained on in packed 30-s windows, as served (default: TrainOptions')")
    parser.add_argument("--repack-windows", action=argparse.BooleanOptionalAction, default=None,
                        help="lay the packed clips into other windows every epoch (default: TrainOptions')")
    parser.add_argument("--validation-fraction", type=float, default=0.1, help="share of training sessions held out")
    parser.add_argument("--max-train-clips", type=int, default=MAX_TRAIN_CLIPS)
    parser.add_argument("--budget-excludes-replay", action="store_true",
                        help="count only accented clips against --max-train-clips (default: replay clips count too)")
    parser.add_argument("--replay-ratio", type=float, default=REPLAY_RATIO)
    parser.add_argument("--replay-manifest", type=Path, default=None, help="default: the generated replay set")
    parser.add_argument("--interpolation-grid", default="0.25,0.5,0.75,1.0")
    parser.add_argument("--interpolation-limit", type=float, default=0.02)
    parser.add_argument("--scoring", choices=SCORINGS, default="alone",
                        help="alone (default): each clip decoded on its own, as Habla transcribes a segment; packed: "
                             f"{BATCH_NOTE}")
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap decoding (smoke runs with a tiny model)")
    parser.add_argument("--generation-max-length", type=int, default=None,
                        help="cap greedy validation decoding while training and choosing λ (default: TrainOptions')")
    parser.add_argument("--train-config", type=Path, default=None, help="TrainOptions TOML/JSON (flags above win)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars: one timestamped line per training log event instead")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.max_train_clips > MAX_TRAIN_CLIPS:
        parser.error(f"--max-train-clips: the benchmark allows at most {MAX_TRAIN_CLIPS} training clips")
    return args


def main(argv: list[str] | None = None) -> int:
    from training.progress import library_bars

    args = parse_args(argv)
    # --quiet: no bar from anything (the base model's conversion, features, weight loading, scoring), but
    # the training's readable lines.
    with training_lines(args.quiet), library_bars(not args.quiet):
        return run(args)


def run(args: argparse.Namespace) -> int:
    from training.evaluate import EvalSet

    manifests = {name: args.corpus / name / "manifest.jsonl" for name in ("train", "test_accent", "test_standard")}
    for path in manifests.values():
        if not path.is_file():
            print(f"{path}: missing; run bench/quality/make_corpus.py first", file=sys.stderr)
            return 2
    home, out = args.work, args.out
    home.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base = ensure_base(home, args.base)

    sets = []
    for name, key in (("accent", "test_accent"), ("standard", "test_standard")):
        rows, problems = read_manifest(manifests[key])
        for line in problems:
            print(line, file=sys.stderr)
        sets.append(EvalSet(name, rows, split_id(rows), str(manifests[key])))
    set_ids = {s.name: s.set_id for s in sets}
    base_path = out / "runs" / "base.json"
    base_scores = read_json(base_path)
    wanted = {"version": base, "set_ids": set_ids, "beam_size": args.beam_size, "max_new_tokens": args.max_new_tokens,
              "scoring": args.scoring}
    if not base_scores or any(base_scores.get(k) != v for k, v in wanted.items()):
        print(f"=== scoring {base} (whisper-base) ===")
        base_scores = {**wanted, **score_version(home, base, sets, args)}
        write_json(base_path, base_scores)

    results = []
    for seed in args.seeds:
        for variant in args.variants:
            results.append(run_variant(args, home, base, variant, seed, sets, base_scores, out))

    summary = summarise(results, base_scores)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    write_json(out / "quality-recipes.json", summary | {"runs": results})
    (out / "quality-recipes.md").write_text(markdown(summary, args))
    chart(summary, out / "quality-recipes.png")
    print("\n" + markdown(summary, args))
    print(f"results: {out / 'quality-recipes.md'}, {out / 'quality-recipes.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
