"""The recipe benchmark: which training recipe learns the accent and keeps standard Spanish.

Reads the corpora of ``bench/quality/make_corpus.py``: ``train/`` (accented classroom sentences, training
voices), ``test_accent/`` and ``test_standard/`` (everyday sentences, accented and standard, spoken by the
held-out voices: no variant trained on their sentences or voices). Registers whisper-base in a work home
and, for every seed, fine-tunes with ``training.train.train`` (the code of ``habla-ls train``):

    base-recipe              the user's accented clips only (recipe "plain")
    rehearsal                plus standard-Spanish replay clips (training/replay_set.py), REPLAY_RATIO of them:
                             the default recipe of ``habla-ls train`` (the README's recipe tables)
    interpolation            base-recipe's weights, interpolated towards whisper-base (training/interpolate.py)
    rehearsal+interpolation  rehearsal's weights, interpolated

The two interpolation variants start from the same fine-tuned weights as their plain counterparts
(``training.train.interpolate_version``: the choice ``habla-ls train --interpolation auto`` makes), so
they cost a weight search, not a second training, and differ from them by the interpolation alone.
Every version (and whisper-base once) is scored by the serving engine (CTranslate2 int8, beam 5), each clip
decoded on its own (``--scoring alone``), as Habla transcribes a segment: whisperx decodes one ASR input per
call. ``--scoring packed`` scores with the backend's packing instead (16 clips per engine call sharing 30-s
windows), which is faster but makes a clip's transcript depend on its window-mates: the same two models
moved by up to 0.06 WER between groupings (the README's scoring table), more than recipes differ.

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
import hashlib
import json
import logging
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ml_backend.registry import CT2_SUBDIR, HF_SUBDIR, list_versions, read_card  # noqa: E402
from training.dataset import read_manifest, split_id  # noqa: E402

DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "results" / "quality-corpus"
DEFAULT_WORK = Path(__file__).resolve().parents[1] / "results" / "quality-run"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "quality"
MAX_TRAIN_CLIPS = 300  # the budget of training clips
SCORINGS = ("alone", "packed")
BATCH_NOTE = ("the backend's packing, 16 clips per engine call laid into shared 30-s windows; a clip's transcript "
              "then depends on its window-mates")
VARIANTS = ("base-recipe", "rehearsal", "interpolation", "rehearsal+interpolation")
# variant -> (recipe it trains with, whether its weights are then interpolated)
PLAN = {
    "base-recipe": ("plain", False),
    "rehearsal": ("rehearsal", False),
    "interpolation": ("plain", True),
    "rehearsal+interpolation": ("rehearsal", True),
}
TARGET_ACCENT = -0.50
TARGET_STANDARD = 0.02


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _fingerprint(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


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


# ---------------------------------------------------------------------------------------------- models


def ensure_base(home: Path, base_dir: Path | None) -> str:
    """whisper-base from the installed wheels (or a transformers dir, e.g. a tiny model for a smoke run),
    registered once in the work home with its CTranslate2 export."""
    models = home / "models"
    if base_dir is None:
        from training.ct2_import import ensure_packaged_base

        return ensure_packaged_base(models)
    name = "bench-base"
    existing = [v for v in list_versions(models) if v.startswith(f"{name}-v")] if models.is_dir() else []
    if existing:
        return existing[0]
    from training.export import convert_to_ct2
    from training.registry import new_version, set_current, write_card

    with new_version(models, name) as (version, staging):
        shutil.copytree(base_dir, staging / HF_SUBDIR)
        convert_to_ct2(staging / HF_SUBDIR, staging / CT2_SUBDIR)
        write_card(staging, {"version": version, "name": name, "parent": None, "base_model": str(base_dir)})
    set_current(models, version, reason="benchmark base")
    return version


def _scored(home: Path, version: str, sets: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """Accent and standard WER with ``--scoring`` (the figures of record), and with the other scoring too
    (``other_scoring``): a reader sees how much the grouping moves them."""
    from ml_backend.engine import DecodeOptions
    from training.evaluate import evaluate_model

    started = time.perf_counter()
    scores: dict[str, Any] = {}
    for scoring in (args.scoring, *(s for s in SCORINGS if s != args.scoring)):
        decode = DecodeOptions(pack=scoring == "packed")
        if args.max_new_tokens:
            decode = DecodeOptions(max_new_tokens=args.max_new_tokens, temperatures=(0.0,), pack=decode.pack)
        evaluation = evaluate_model(home / "models" / version, sets, label=f"{version} ({scoring})", beam_size=args.beam_size,
                                    decode_options=decode, progress=not args.quiet)
        figures = {"accent_wer": evaluation.reports["accent"].wer, "standard_wer": evaluation.reports["standard"].wer}
        if not scores:
            scores = {**figures, "accent_clips": evaluation.reports["accent"].utterances,
                      "standard_clips": evaluation.reports["standard"].utterances}
        else:
            scores["other_scoring"] = {"scoring": scoring, **figures}
    scores["evaluation_seconds"] = round(time.perf_counter() - started, 1)
    return scores


# ---------------------------------------------------------------------------------------------- data


def labelled_subset(manifest: Path, limit: int, home: Path, seed: int) -> tuple[Path, int]:
    """The first ``limit`` rows of a seeded order of the train manifest (so a smaller budget is a subset)."""
    rows, problems = read_manifest(manifest)
    for line in problems:
        print(line, file=sys.stderr)
    order = sorted(rows, key=lambda r: r["segment_key"])
    random.Random(seed).shuffle(order)
    chosen = sorted(order[:limit], key=lambda r: r["segment_key"])
    subset = home / "manifests" / f"train-{len(chosen)}-s{seed}.jsonl"
    subset.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen)
    if not subset.is_file() or subset.read_text() != text:
        subset.write_text(text)
    return subset, len(chosen)


def train_options(args: argparse.Namespace, recipe: str, seed: int, manifest: Path, base: str, name: str) -> Any:
    from training.train import TrainOptions

    overrides = dict(
        base=base, name=name, method=args.method, manifest=str(manifest), epochs=args.epochs, max_steps=args.max_steps,
        batch_size=args.batch_size, eval_batch_size=args.batch_size, learning_rate=args.learning_rate,
        generation_max_length=args.generation_max_length,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha or 2 * args.lora_r, lora_target_modules=args.target_modules,
        frozen_encoder_layers=args.frozen_encoder_layers, mel_warp=args.mel_warp, pack_fraction=args.pack_fraction, repack_windows=args.repack_windows, lora_scope=args.lora_scope, seed=seed, recipe=recipe, replay_ratio=args.replay_ratio if recipe == "rehearsal" else None,
        replay_manifest=str(args.replay_manifest) if args.replay_manifest else None,
        interpolation="off", interpolation_limit=args.interpolation_limit,
        # the benchmark has its own test sets: every training session goes to train or validation
        test_fraction=0.0, validation_fraction=args.validation_fraction, restart=True, progress=not args.quiet,
    )
    if args.train_config:
        return TrainOptions.from_file(args.train_config, **overrides)
    return TrainOptions().with_overrides(**overrides)


# ---------------------------------------------------------------------------------------------- one seed


def run_training(args: argparse.Namespace, home: Path, base: str, recipe: str, seed: int, out: Path) -> dict[str, Any]:
    """Train ``recipe`` with ``seed`` (or reuse the finished run with the same settings)."""
    from training.train import RECIPES, train

    ratio = args.replay_ratio if recipe == "rehearsal" else RECIPES[recipe].replay_ratio
    limit = args.max_train_clips
    if ratio > 0 and not args.budget_excludes_replay:
        limit = int(args.max_train_clips / (1.0 + ratio))
    manifest, labelled = labelled_subset(args.corpus / "train" / "manifest.jsonl", limit, home, seed)
    name = f"bench-{recipe}-s{seed}"
    options = train_options(args, recipe, seed, manifest, base, name)
    recorded = options.to_dict()
    for added_later in ("pack_fraction", "repack_windows"):
        if not recorded.get(added_later):
            recorded.pop(added_later, None)  # off, it trains as runs recorded before it existed did
    settings = {"options": recorded | {"restart": None, "progress": None, "resume": False},
                "manifest": split_id(read_manifest(manifest)[0])}
    record_path = out / "runs" / f"train-{recipe}-s{seed}.json"
    record = _read_json(record_path)
    if record and record.get("settings_id") == _fingerprint(settings) and (home / "models" / record["version"]).is_dir():
        print(f"{recipe}, seed {seed}: trained before ({record['version']}); reusing it")
        return record
    # An interrupted training with the same settings continues from its last epoch checkpoint.
    started_path = out / "runs" / f"train-{recipe}-s{seed}.started.json"
    if (_read_json(started_path) or {}).get("settings_id") == _fingerprint(settings):
        options = options.with_overrides(resume=True, restart=False)
        print(f"\n=== training {recipe}, seed {seed}: {labelled} labelled clips (resuming an interrupted run) ===")
    else:
        _write_json(started_path, {"settings_id": _fingerprint(settings)})
        print(f"\n=== training {recipe}, seed {seed}: {labelled} labelled clips ===")
    started = time.perf_counter()
    result = train(options, home=home)
    card = read_card(home / "models" / result.version)
    record = {
        "settings_id": _fingerprint(settings),
        "recipe": recipe,
        "seed": seed,
        "version": result.version,
        "labelled_clips": labelled,
        "train_clips": result.train_clips,
        "replay_clips": result.replay_clips,
        "validation_clips": result.dataset_sizes.get("validation", 0),
        "total_training_clips": result.train_clips + result.replay_clips + result.dataset_sizes.get("validation", 0),
        "train_minutes_of_audio": round(result.train_hours * 60, 1),
        "steps": result.global_step,
        "epochs": result.epochs,
        "validation_wer": result.validation_wer,
        "training_seconds": round(time.perf_counter() - started, 1),
        "options": card.get("options"),
    }
    _write_json(record_path, record)
    return record


def run_variant(args: argparse.Namespace, home: Path, base: str, variant: str, seed: int, sets: list[Any],
                base_scores: dict[str, Any], out: Path) -> dict[str, Any]:
    from training.train import interpolate_version

    result_path = out / "runs" / f"{variant}-s{seed}.json"
    recipe, interpolated = PLAN[variant]
    trained = run_training(args, home, base, recipe, seed, out)
    settings = {"trained": trained["settings_id"], "interpolated": interpolated, "limit": args.interpolation_limit,
                "grid": args.interpolation_grid, "sets": base_scores["set_ids"], "beam": args.beam_size,
                "max_new_tokens": args.max_new_tokens}
    if args.scoring != "packed":
        settings["scoring"] = args.scoring  # results scored before the option existed were packed
    done = _read_json(result_path)
    if done and done.get("settings_id") == _fingerprint(settings):
        print(f"{variant}, seed {seed}: results exist ({result_path.name}); skipped")
        return done
    version, lam, search_seconds, choice = trained["version"], None, 0.0, None
    if interpolated:
        started = time.perf_counter()
        options = train_options(args, recipe, seed, Path(trained["options"]["manifest"]), base, f"bench-{recipe}-interp-s{seed}")
        options = options.with_overrides(interpolation="auto", interpolation_grid=args.interpolation_grid)
        print(f"\n=== {variant}, seed {seed}: choosing the interpolation weight of {version} ===")
        mixed = interpolate_version(version, options, home=home)
        version, lam, choice = mixed.version, mixed.interpolation.lam, mixed.interpolation.to_dict()
        search_seconds = time.perf_counter() - started
    print(f"=== {variant}, seed {seed}: scoring {version} ===")
    scores = _scored(home, version, sets, args)
    other, base_other = scores.get("other_scoring"), base_scores.get("other_scoring")
    if other and base_other and other["scoring"] == base_other["scoring"]:
        other["accent_change"] = _relative(other["accent_wer"], base_other["accent_wer"])
        other["standard_change"] = _relative(other["standard_wer"], base_other["standard_wer"])
    result = {
        "settings_id": _fingerprint(settings),
        "variant": variant,
        "seed": seed,
        "version": version,
        "trained_version": trained["version"],
        "lambda": lam,
        "interpolation": choice,
        **{k: trained[k] for k in ("labelled_clips", "train_clips", "replay_clips", "validation_clips", "total_training_clips",
                                   "train_minutes_of_audio", "steps", "epochs", "training_seconds")},
        "interpolation_seconds": round(search_seconds, 1),
        **scores,
        "accent_change": _relative(scores["accent_wer"], base_scores["accent_wer"]),
        "standard_change": _relative(scores["standard_wer"], base_scores["standard_wer"]),
    }
    _write_json(result_path, result)
    return result


def _relative(value: float, base: float) -> float:
    return (value - base) / base if base else 0.0


# ---------------------------------------------------------------------------------------------- summary


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def summarise(results: list[dict[str, Any]], base_scores: dict[str, Any]) -> dict[str, Any]:
    variants = {}
    for variant in VARIANTS:
        runs = sorted((r for r in results if r["variant"] == variant), key=lambda r: r["seed"])
        if not runs:
            continue
        summary = {
            "seeds": [r["seed"] for r in runs],
            "accent_wer": _spread([r["accent_wer"] for r in runs]),
            "standard_wer": _spread([r["standard_wer"] for r in runs]),
            "accent_change": _spread([r["accent_change"] for r in runs]),
            "standard_change": _spread([r["standard_change"] for r in runs]),
            "lambdas": [r["lambda"] for r in runs],
            "total_training_clips": max(r["total_training_clips"] for r in runs),
            "replay_clips": [r["replay_clips"] for r in runs],
            "training_minutes": round(statistics.fmean(r["training_seconds"] for r in runs) / 60, 1),
        }
        # Relative change of the mean WER (what "mean of 2 seeds" compares to whisper-base).
        summary["mean_accent_change"] = _relative(summary["accent_wer"]["mean"], base_scores["accent_wer"])
        summary["mean_standard_change"] = _relative(summary["standard_wer"]["mean"], base_scores["standard_wer"])
        others = [r.get("other_scoring") for r in runs]
        base_other = base_scores.get("other_scoring")
        if base_other and all(o and o["scoring"] == base_other["scoring"] for o in others):
            summary["other_scoring"] = {
                "scoring": base_other["scoring"],
                "mean_accent_change": _relative(statistics.fmean(o["accent_wer"] for o in others), base_other["accent_wer"]),
                "mean_standard_change": _relative(statistics.fmean(o["standard_wer"] for o in others), base_other["standard_wer"]),
            }
        summary["target_met"] = (summary["mean_accent_change"] <= TARGET_ACCENT
                                 and summary["mean_standard_change"] <= TARGET_STANDARD
                                 and summary["total_training_clips"] <= MAX_TRAIN_CLIPS)
        variants[variant] = summary
    return {"base": base_scores, "variants": variants}


def training_line(args: argparse.Namespace) -> str:
    """The training options these results were run with, defaults resolved (as each run's record holds them)."""
    o = train_options(args, "plain", 0, Path("-"), "-", "-")
    parts = [o.method]
    if o.method == "lora":
        parts.append(f"r {o.lora_r}, alpha {o.lora_alpha}, {'/'.join(o.lora_target_modules)} on {o.lora_scope}")
    parts += [f"{o.epochs:g} epochs (max steps {o.max_steps})", f"batch {o.batch_size}", f"learning rate {o.effective_learning_rate:g}",
              f"pack fraction {o.pack_fraction:g}" + (", windows re-planned every epoch" if o.repack_windows else "")]
    if o.mel_warp:
        parts.append(f"mel warp {o.mel_warp:g}")
    if o.spec_augment:
        parts.append("SpecAugment")
    if o.frozen_encoder_layers:
        parts.append(f"{o.frozen_encoder_layers} encoder layers frozen")
    return ", ".join(parts)


def markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    base = summary["base"]

    def cell(spread: dict[str, float], percent: bool = False) -> str:
        if percent:
            return f"{spread['mean']:+.1%} [{spread['min']:+.1%}, {spread['max']:+.1%}]"
        return f"{spread['mean']:.3f} [{spread['min']:.3f}, {spread['max']:.3f}]"

    lines = [
        "# Recipe benchmark",
        "",
        f"whisper-base ({base['version']}): accent WER {base['accent_wer']:.3f} on {base['accent_clips']} clips, standard WER "
        f"{base['standard_wer']:.3f} on {base['standard_clips']} clips (held-out voices and sentences; serving engine, "
        f"CTranslate2 int8, beam {args.beam_size}; "
        + ("each clip decoded alone, as Habla transcribes a segment" if args.scoring == "alone" else f"packed: {BATCH_NOTE}")
        + "). Mean [min, max] over seeds; change relative to whisper-base.",
        "",
        "| variant | seeds | accent WER | accent change | standard WER | standard change | other scoring: change of the mean "
        "(accent / standard) | λ | clips (replay) | target |",
        "|---|---|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for variant, s in summary["variants"].items():
        lams = ", ".join("-" if lam is None else f"{lam:g}" for lam in s["lambdas"])
        other = s.get("other_scoring")
        other_cell = (f"{other['scoring']}: {other['mean_accent_change']:+.1%} / {other['mean_standard_change']:+.1%}"
                      if other else "-")
        lines.append(
            f"| {variant} | {','.join(map(str, s['seeds']))} | {cell(s['accent_wer'])} | {cell(s['accent_change'], True)} | "
            f"{cell(s['standard_wer'])} | {cell(s['standard_change'], True)} | {other_cell} | {lams} | {s['total_training_clips']} "
            f"({'/'.join(map(str, s['replay_clips']))}) | {'MET' if s['target_met'] else 'not met'} |"
        )
    base_other = base.get("other_scoring")
    if base_other:
        lines += ["", f"whisper-base scored {base_other['scoring']}: accent {base_other['accent_wer']:.3f}, standard "
                      f"{base_other['standard_wer']:.3f}. The target is read on the first scoring."]
    lines += [
        "",
        f"Target: accent WER of the mean <= {TARGET_ACCENT:+.0%}, standard <= {TARGET_STANDARD:+.0%} relative, "
        f"<= {MAX_TRAIN_CLIPS} training clips. {training_line(args)}, replay ratio {args.replay_ratio}, interpolation "
        f"grid {args.interpolation_grid}, limit {args.interpolation_limit:.0%} (standard-speech validation WER, greedy).",
    ]
    return "\n".join(lines) + "\n"


def chart(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(summary["variants"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, key, target, title in (
        (axes[0], "accent_change", TARGET_ACCENT, "accent WER vs whisper-base"),
        (axes[1], "standard_change", TARGET_STANDARD, "standard WER vs whisper-base"),
    ):
        means = [summary["variants"][v][key]["mean"] * 100 for v in variants]
        low = [means[i] - summary["variants"][v][key]["min"] * 100 for i, v in enumerate(variants)]
        high = [summary["variants"][v][key]["max"] * 100 - means[i] for i, v in enumerate(variants)]
        ax.bar(range(len(variants)), means, yerr=[low, high], capsize=4, color="#4c72b0")
        ax.axhline(target * 100, color="#c44e52", linestyle="--", label=f"target {target:+.0%}")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right")
        ax.set_ylabel("change vs whisper-base, % (mean, min-max)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from training.train import REPLAY_RATIO

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
    base_scores = _read_json(base_path)
    wanted = {"version": base, "set_ids": set_ids, "beam_size": args.beam_size, "max_new_tokens": args.max_new_tokens,
              "scoring": args.scoring}
    if not base_scores or any(base_scores.get(k) != v for k, v in wanted.items()):
        print(f"=== scoring {base} (whisper-base) ===")
        base_scores = {**wanted, **_scored(home, base, sets, args)}
        _write_json(base_path, base_scores)

    results = []
    for seed in args.seeds:
        for variant in args.variants:
            results.append(run_variant(args, home, base, variant, seed, sets, base_scores, out))

    summary = summarise(results, base_scores)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    _write_json(out / "quality-recipes.json", summary | {"runs": results})
    (out / "quality-recipes.md").write_text(markdown(summary, args))
    chart(summary, out / "quality-recipes.png")
    print("\n" + markdown(summary, args))
    print(f"results: {out / 'quality-recipes.md'}, {out / 'quality-recipes.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
