"""Training speed of a whisper-small-shaped model: clips/second and time per epoch, LoRA and full.

whisper-small's weights are not available offline, so its architecture is built from its config
(d_model 768, 12 encoder + 12 decoder layers, 12 heads, FFN 3072, 80 mel bins, 51,865 tokens) with
random weights. Speed does not depend on the values of the weights, only on the shapes, so the
figures hold for the real model. Each step is a real forward + backward + AdamW update on a batch of
30-s log-mel windows (every Whisper input is padded to 30 s) with short label sequences like Habla's
segments.

    .venv/bin/python bench/train_speed.py                  # CPU, and the GPU when there is one
    .venv/bin/python bench/train_speed.py --devices cuda --steps 20 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

WHISPER_SMALL = dict(
    vocab_size=51865,
    num_mel_bins=80,
    d_model=768,
    encoder_layers=12,
    decoder_layers=12,
    encoder_attention_heads=12,
    decoder_attention_heads=12,
    encoder_ffn_dim=3072,
    decoder_ffn_dim=3072,
    max_source_positions=1500,
    max_target_positions=448,
    decoder_start_token_id=50258,
    pad_token_id=50257,
    eos_token_id=50257,
    bos_token_id=50257,
)


def build_model(method: str, lora_r: int, gradient_checkpointing: bool):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**WHISPER_SMALL))
    if gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=["q_proj", "v_proj"], lora_dropout=0.05))
    return model


def measure(method: str, device: str, args: argparse.Namespace) -> dict:
    model = build_model(method, args.lora_r, args.gradient_checkpointing).to(device).train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    batch = args.batch_size
    features = torch.randn(batch, 80, 3000, device=device)
    labels = torch.randint(0, 50000, (batch, args.label_tokens), device=device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    use_bf16 = device == "cuda" and torch.cuda.is_bf16_supported() and not args.fp32
    precision = "bf16 autocast" if use_bf16 else "fp32"

    def step() -> float:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(input_features=features, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    seconds_per_step = elapsed / args.steps
    clips_per_second = batch / seconds_per_step
    result = {
        "method": method if method == "full" else f"lora r{args.lora_r} q,v",
        "device": device,
        "precision": precision,
        "batch": batch,
        "steps": args.steps,
        "trainable_params_m": round(trainable / 1e6, 2),
        "total_params_m": round(total / 1e6, 1),
        "seconds_per_step": round(seconds_per_step, 3),
        "clips_per_second": round(clips_per_second, 2),
        "epoch_seconds": round(args.epoch_clips / clips_per_second, 1),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
    }
    return result  # model and optimizer go with this frame; the next measurement starts clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument("--batch-size", type=int, default=None, help="clips per step (default 4 on CPU, 16 on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 2 on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--label-tokens", type=int, default=24, help="label length: a 2-5 s Habla segment")
    parser.add_argument("--epoch-clips", type=int, default=300, help="clips per epoch for the epoch-time column")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on the GPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA GPU here: skipping cuda", file=sys.stderr)
        devices = [d for d in devices if d != "cuda"]

    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    if torch.cuda.is_available():
        where += f"; GPU {torch.cuda.get_device_name(0)}"
    print(f"whisper-small-shaped model, RANDOM weights (speed depends on shapes, not values); {where}")
    print(f"torch {torch.__version__}; batch of 30-s windows, {args.label_tokens} label tokens; epoch = {args.epoch_clips} clips")
    rows = []
    for device in devices:
        saved = args.batch_size, args.steps
        args.batch_size = args.batch_size or (16 if device == "cuda" else 4)
        args.steps = args.steps or (20 if device == "cuda" else 2)
        for method in args.methods:
            rows.append(measure(method, device, args))
            if device == "cuda":
                torch.cuda.empty_cache()
            r = rows[-1]
            print(f"  measured {r['method']} on {device}: {r['seconds_per_step']} s/step", file=sys.stderr)
        args.batch_size, args.steps = saved
    header = f"{'method':<16}{'device':<7}{'precision':<15}{'batch':>6}{'s/step':>9}{'clips/s':>9}{'epoch (s)':>11}{'trainable M':>13}{'GPU GiB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        gpu = "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.1f}"
        print(
            f"{r['method']:<16}{r['device']:<7}{r['precision']:<15}{r['batch']:>6}{r['seconds_per_step']:>9.2f}"
            f"{r['clips_per_second']:>9.2f}{r['epoch_seconds']:>11.0f}{r['trainable_params_m']:>13.2f}{gpu:>9}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
