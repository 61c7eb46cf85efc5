"""``habla-ls train``: fine-tune on the pulled corrections and register the result as a new version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from habla_ls.config import Settings
from training.options import DEFAULT_RECIPE, PULLBACK_WEIGHT, RECIPES, REPLAY_RATIO, TrainError, TrainOptions


@click.command("train")
@click.option("--config", "options_file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Options from a TOML (optionally under [train]) or JSON file; flags given here win.")
@click.option("--base", help="Registry version or transformers model dir to start from (default: as --start-from says).")
@click.option("--start-from", type=click.Choice(["served", "root"]),
              help="Without --base: 'root' (default), the model the served version descends from (whisper-base "
                   "after `models bootstrap`): each round is one fine-tune of the same model on every correction so "
                   "far, so fine-tunes never pile up; or 'served', the version being served.")
@click.option("--name", help="Versions are registered as <name>-vN (default: habla).")
@click.option("--method", type=click.Choice(["lora", "full"]), help="LoRA adapters (default, small and fast) or all weights.")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), help="Dataset manifest (default <home>/datasets/manifest.jsonl).")
@click.option("--recipe", type=click.Choice(list(RECIPES)),
              help=f"plain: the user's clips only; rehearsal: plus standard-Spanish replay clips; interpolation: "
                   f"register W_base + λ(W_tuned - W_base), λ chosen on validation; rehearsal+interpolation: both; "
                   f"rehearsal+pullback: rehearsal, then λ = {PULLBACK_WEIGHT} (default {DEFAULT_RECIPE}).")
@click.option("--replay-ratio", type=click.FloatRange(min=0), help=f"Replay clips per training clip (rehearsal: {REPLAY_RATIO}; 0 = off).")
@click.option("--replay-manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Standard-speech replay manifest (default: generated once with the training voices).")
@click.option("--interpolation", help="off, auto (λ chosen on validation) or a fixed λ between 0 and 1.")
@click.option("--interpolation-limit", type=click.FloatRange(min=0),
              help="auto: standard-speech validation WER may be worse than the base's by this share (default 0.02).")
@click.option("--epochs", type=float, help="Training epochs (default 5).")
@click.option("--max-steps", type=int, help="Stop after this many optimiser steps (overrides --epochs).")
@click.option("--learning-rate", "--lr", "learning_rate", type=float, help="Default 1e-3 for LoRA, 1e-5 for full.")
@click.option("--batch-size", type=int, help="Clips per device per step (default 8).")
@click.option("--grad-accum", "gradient_accumulation_steps", type=int, help="Steps to accumulate before an update.")
@click.option("--lora-r", type=int, help="LoRA rank (default 16).")
@click.option("--lora-alpha", type=int, help="LoRA alpha (default 32).")
@click.option("--lora-targets", "lora_target_modules", help="Comma-separated modules for LoRA (default q_proj,v_proj).")
@click.option("--lora-scope", type=click.Choice(["encoder+decoder", "encoder", "decoder"]),
              help="Which half of the model gets LoRA adapters (default encoder+decoder).")
@click.option("--frozen-encoder-layers", type=click.IntRange(min=0),
              help="Freeze the encoder's first N layers and compute their output once: several times faster on a CPU, "
                   "but less accurate on new voices (for quick iterations; 0 = train all, the default; the encoder's "
                   "layer count or more = the decoder alone).")
@click.option("--early-stopping", "early_stopping_patience", type=int, help="Epochs without a better validation WER before stopping (0 = off).")
@click.option("--mel-warp", type=click.FloatRange(min=0, max=0.5, max_open=True),
              help="Vocal-tract-length perturbation: stretch each training clip's mel axis by up to this share (0 = off).")
@click.option("--pack-fraction", type=click.FloatRange(min=0, max=1),
              help="Share of the training clips trained on several to a 30-s window, as the backend packs short clips "
                   "when it serves; the rest train alone (default 0.5; 0 = every clip alone).")
@click.option("--repack-windows/--no-repack-windows", default=None,
              help="Lay the packed clips into other windows every epoch: other neighbours, other places in the window.")
@click.option("--spec-augment/--no-spec-augment", default=None, help="Mask time and frequency bands of the input while training.")
@click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=None, help="Trade compute for memory.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), help="auto: bf16/fp16 on GPU, fp32 on CPU.")
@click.option("--seed", type=int, help="Random seed (default 42).")
@click.option("--resume", is_flag=True, default=None, help="Continue the last unfinished run from its latest checkpoint.")
@click.option("--restart", is_flag=True, default=None, help="Discard the checkpoints of an unfinished run and start over.")
@click.option("--preprocessing-only", is_flag=True, default=None, help="Compute and cache the features, then stop.")
@click.option("--no-export", "export_ct2", flag_value=False, default=None, help="Do not write the CTranslate2 export into the version.")
@click.pass_obj
def train_command(settings: Settings, options_file: Path | None, **flags: Any) -> None:
    """Fine-tune Whisper on the corrections pulled from Label Studio.

    Uses <home>/datasets/manifest.jsonl (`habla-ls sync pull`), splits it by session (the test split
    stays fixed across rounds), trains with WER on the validation split after every epoch, keeps the
    best checkpoint and registers it as <name>-vN with its model card. Nothing is served until
    `habla-ls evaluate` and `habla-ls models promote` say it is better.

    \b
    Several processes or GPUs (the same command under a launcher; rank 0 registers):
      torchrun --nproc-per-node 2 -m habla_ls.cli train ...
      accelerate launch --num_processes 2 -m habla_ls.cli train ...
    """
    try:
        options = TrainOptions.from_file(options_file, **flags) if options_file else TrainOptions().with_overrides(**flags)
        from training.train import train

        result = train(options, home=settings.home)
    except TrainError as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:  # dataset problems etc. arrive as their own error types
        from training.manifest import DatasetError
        from training.replay_set import ReplaySetError

        if isinstance(exc, DatasetError | ReplaySetError):
            raise click.ClickException(str(exc)) from exc
        raise
    sizes = ", ".join(f"{k} {v}" for k, v in result.dataset_sizes.items())
    if result.rejected:
        click.echo(f"{len(result.rejected)} segment(s) left out (see the warnings above)")
    if options.preprocessing_only:
        click.echo(f"features cached ({sizes}); run again without --preprocessing-only to train")
        return
    if result.version is None:
        return  # not the main process of a multi-process run
    wer = "-" if result.validation_wer is None else f"{result.validation_wer:.4f}"
    replay = f" + {result.replay_clips} replay" if result.replay_clips else ""
    click.echo(
        f"registered {result.version} ({options.method} from {result.parent or result.base}, {result.train_clips} clips{replay} / "
        f"{result.train_hours * 60:.1f} min, "
        f"{result.global_step} steps, validation WER {wer}) in {result.version_dir}"
    )
    if result.interpolation is not None:
        click.echo(f"interpolation weight {result.interpolation.lam:g}: {result.interpolation.reason}")
    click.echo(f"next: habla-ls evaluate {result.version} && habla-ls models promote {result.version}")
