"""One variant of the recipe benchmark for one seed: its training, its interpolation and its scores,
each kept as a JSON record so that a re-run with unchanged settings skips it."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from ml_backend.registry import CT2_SUBDIR, HF_SUBDIR, list_versions, read_card
from training.manifest import read_manifest, split_id

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


def write_json(path: Path, data: Any) -> None:
    """Written whole or not at all: an interrupted benchmark never leaves half a record to resume from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The record, or None where there is none yet."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def fingerprint(data: Any) -> str:
    """A short id of the settings a record was made with: a record is reused only under the same one."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


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
    from training.ct2_convert import convert_to_ct2
    from training.registry import new_version, set_current, write_card

    with new_version(models, name) as (version, staging):
        shutil.copytree(base_dir, staging / HF_SUBDIR)
        convert_to_ct2(staging / HF_SUBDIR, staging / CT2_SUBDIR)
        write_card(staging, {"version": version, "name": name, "parent": None, "base_model": str(base_dir)})
    set_current(models, version, reason="benchmark base")
    return version


def score_version(home: Path, version: str, sets: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    """Accent and standard WER with ``--scoring`` (the figures of record), and with the other scoring too
    (``other_scoring``): a reader sees how much the grouping moves them."""
    from ml_backend.decoding import DecodeOptions
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
    from training.options import TrainOptions

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
    from training.options import RECIPES
    from training.train import train

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
    record = read_json(record_path)
    if record and record.get("settings_id") == fingerprint(settings) and (home / "models" / record["version"]).is_dir():
        print(f"{recipe}, seed {seed}: trained before ({record['version']}); reusing it")
        return record
    # An interrupted training with the same settings continues from its last epoch checkpoint.
    started_path = out / "runs" / f"train-{recipe}-s{seed}.started.json"
    if (read_json(started_path) or {}).get("settings_id") == fingerprint(settings):
        options = options.with_overrides(resume=True, restart=False)
        print(f"\n=== training {recipe}, seed {seed}: {labelled} labelled clips (resuming an interrupted run) ===")
    else:
        write_json(started_path, {"settings_id": fingerprint(settings)})
        print(f"\n=== training {recipe}, seed {seed}: {labelled} labelled clips ===")
    started = time.perf_counter()
    result = train(options, home=home)
    card = read_card(home / "models" / result.version)
    record = {
        "settings_id": fingerprint(settings),
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
    write_json(record_path, record)
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
    done = read_json(result_path)
    if done and done.get("settings_id") == fingerprint(settings):
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
    scores = score_version(home, version, sets, args)
    other, base_other = scores.get("other_scoring"), base_scores.get("other_scoring")
    if other and base_other and other["scoring"] == base_other["scoring"]:
        other["accent_change"] = relative_change(other["accent_wer"], base_other["accent_wer"])
        other["standard_change"] = relative_change(other["standard_wer"], base_other["standard_wer"])
    result = {
        "settings_id": fingerprint(settings),
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
        "accent_change": relative_change(scores["accent_wer"], base_scores["accent_wer"]),
        "standard_change": relative_change(scores["standard_wer"], base_scores["standard_wer"]),
    }
    write_json(result_path, result)
    return result


def relative_change(value: float, base: float) -> float:
    """``value`` relative to whisper-base's ``base`` (-0.5: half its WER)."""
    return (value - base) / base if base else 0.0

