"""The recipe benchmark's report: mean and range over seeds per variant, the issue's target, the table and
the chart."""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

from bench.quality.variants import BATCH_NOTE, MAX_TRAIN_CLIPS, VARIANTS, relative_change, train_options

TARGET_ACCENT = -0.50
TARGET_STANDARD = 0.02


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
        summary["mean_accent_change"] = relative_change(summary["accent_wer"]["mean"], base_scores["accent_wer"])
        summary["mean_standard_change"] = relative_change(summary["standard_wer"]["mean"], base_scores["standard_wer"])
        others = [r.get("other_scoring") for r in runs]
        base_other = base_scores.get("other_scoring")
        if base_other and all(o and o["scoring"] == base_other["scoring"] for o in others):
            summary["other_scoring"] = {
                "scoring": base_other["scoring"],
                "mean_accent_change": relative_change(statistics.fmean(o["accent_wer"] for o in others), base_other["accent_wer"]),
                "mean_standard_change": relative_change(statistics.fmean(o["standard_wer"] for o in others), base_other["standard_wer"]),
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
