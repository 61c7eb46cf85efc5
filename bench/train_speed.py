"""Training speed of a Whisper-shaped model: clips/second and time per epoch, LoRA and full, and what
freezing the lower encoder (``frozen_encoder_layers``) buys against the unfrozen baseline in the same run.

The weights are random (whisper-base's and whisper-small's are not needed offline): speed depends on the
shapes, not the values, so the figures hold for the real models. ``--shape base`` is whisper-base
(d_model 512, 6 + 6 layers, 8 heads, FFN 2048), the model the project trains on a CPU; ``--shape small``
is whisper-small (d_model 768, 12 + 12 layers, 12 heads, FFN 3072). Each step is a real forward +
backward + AdamW update on a batch of 30-s log-mel windows (every Whisper input is padded to 30 s) with
short label sequences like Habla's segments.

With ``--frozen-encoder-layers K`` (K > 0) the model is frozen and adapted as ``training.model.build_model``
does it (``training.encoder_cache``: LoRA only above layer K, or full fine-tuning with the stem and the
first K layers frozen), the encoder states after layer K are computed once per clip with
``compute_states`` (timed separately: the one-off cost of the first epoch), and the steps read them
through ``SpeechCollator`` as training does: the upper layers run on them (``run_upper_layers``), or, with
every layer frozen, they go straight to the decoder as ``encoder_outputs``. K = 0 is always measured too:
the speed-up columns are ratios against it, same shape, method and device, in the same run.

    .venv/bin/python bench/train_speed.py                          # whisper-base, K = 0 4 6, CPU (+ GPU)
    .venv/bin/python bench/train_speed.py --shape small --frozen-encoder-layers 0
    .venv/bin/python bench/train_speed.py --devices cuda --steps 20 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `training` from a checkout, installed or not

import numpy as np  # noqa: E402
import torch  # noqa: E402

_COMMON = dict(
    vocab_size=51865,
    num_mel_bins=80,
    max_source_positions=1500,
    max_target_positions=448,
    decoder_start_token_id=50258,
    pad_token_id=50257,
    eos_token_id=50257,
    bos_token_id=50257,
)
WHISPER_BASE = dict(
    _COMMON, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
    encoder_ffn_dim=2048, decoder_ffn_dim=2048,
)
WHISPER_SMALL = dict(
    _COMMON, d_model=768, encoder_layers=12, decoder_layers=12, encoder_attention_heads=12, decoder_attention_heads=12,
    encoder_ffn_dim=3072, decoder_ffn_dim=3072,
)
SHAPES: dict[str, dict[str, Any]] = {"base": WHISPER_BASE, "small": WHISPER_SMALL}
LORA_TARGETS = ["q_proj", "v_proj"]  # TrainOptions.lora_target_modules' default


def default_frozen_layers(shape: dict[str, Any]) -> list[int]:
    """0 (the baseline), two thirds of the encoder, all of it: 0 4 6 for whisper-base, 0 8 12 for small."""
    layers = shape["encoder_layers"]
    return sorted({0, (2 * layers) // 3, layers})


def build_model(shape: dict[str, Any], method: str, lora_r: int, gradient_checkpointing: bool, frozen_layers: int = 0) -> Any:
    """A random-weight model frozen and adapted by ``training.model.adapt_model``, as training does it."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from training.model import adapt_model
    from training.options import TrainOptions

    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig(**shape))
    if gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    options = TrainOptions(method=method, lora_r=lora_r, lora_alpha=2 * lora_r, lora_target_modules=LORA_TARGETS,
                           frozen_encoder_layers=frozen_layers)
    return adapt_model(model, options)


class _FeatureRows:
    """The slice of a ``datasets`` split that ``compute_states`` reads: ``rows[a:b]["input_features"]``."""

    def __init__(self, features: np.ndarray) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: slice) -> dict[str, np.ndarray]:
        return {"input_features": self.features[index]}


def cached_states(model: Any, features: np.ndarray, frozen_layers: int, batch_size: int) -> tuple[np.ndarray, float]:
    """The states training caches for ``features`` (``compute_states``, memory-mapped float16), and the seconds it took."""
    from training.encoder_cache import compute_states

    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        started = time.perf_counter()
        states = compute_states(model, _FeatureRows(features), Path(tmp) / "encoder-states-train-bench.npy",
                                frozen_layers=frozen_layers, batch_size=batch_size)
        states = np.array(states)  # out of the memory map before its directory goes
        return states, time.perf_counter() - started


def measure(method: str, device: str, args: argparse.Namespace, frozen_layers: int = 0) -> dict:
    from training.collator import SpeechCollator
    from training.encoder_cache import EncoderStatesDataset, run_upper_layers

    shape = SHAPES[args.shape]
    model = build_model(shape, method, args.lora_r, args.gradient_checkpointing, frozen_layers).to(device).train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    batch = args.batch_size
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 50000, (batch, args.label_tokens), generator=generator).numpy()
    collate = SpeechCollator(pad_token_id=shape["pad_token_id"], decoder_start_token_id=shape["decoder_start_token_id"])
    cache_seconds = 0.0
    cache_clips = 0
    restore_encoder = None
    if frozen_layers:
        cache_clips = max(args.cache_clips, batch)
        features = torch.randn(cache_clips, shape["num_mel_bins"], 3000, generator=generator).numpy()
        states, cache_seconds = cached_states(model, features, frozen_layers, args.cache_batch_size)
        rows = EncoderStatesDataset(states[:batch], list(labels))
        inputs = collate([rows[i] for i in range(batch)])
        restore_encoder = run_upper_layers(model.get_encoder(), frozen_layers)
    else:
        features = torch.randn(batch, shape["num_mel_bins"], 3000, generator=generator).numpy()
        inputs = collate([{"input_features": features[i], "labels": labels[i]} for i in range(batch)])
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    use_bf16 = device == "cuda" and torch.cuda.is_bf16_supported() and not args.fp32
    precision = "bf16 autocast" if use_bf16 else "fp32"

    def step() -> float:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    try:
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
    finally:
        if restore_encoder is not None:
            restore_encoder()
    seconds_per_step = elapsed / args.steps
    clips_per_second = batch / seconds_per_step
    cache_per_clip = cache_seconds / cache_clips if cache_clips else 0.0
    epoch_seconds = args.epoch_clips / clips_per_second
    return {
        "shape": f"whisper-{args.shape}",
        "method": method if method == "full" else f"lora r{args.lora_r} q,v",
        "device": device,
        "precision": precision,
        "frozen_encoder_layers": frozen_layers,
        "encoder_layers": len(model.get_encoder().layers),
        "batch": batch,
        "steps": args.steps,
        "trainable_params": trainable,
        "trainable_params_m": round(trainable / 1e6, 2),
        "total_params_m": round(total / 1e6, 1),
        "seconds_per_step": round(seconds_per_step, 3),
        "clips_per_second": round(clips_per_second, 2),
        "cache_seconds_per_clip": round(cache_per_clip, 4),
        "cache_clips_timed": cache_clips,
        "epoch_seconds": round(epoch_seconds, 1),  # every epoch after the first
        "first_epoch_seconds": round(epoch_seconds + args.epoch_clips * cache_per_clip, 1),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }  # model and optimizer go with this frame; the next measurement starts clean


def add_speedups(rows: list[dict]) -> None:
    """Each row's speed-up against the K = 0 row of its shape, method and device (the named baseline)."""
    baselines = {(r["shape"], r["method"], r["device"]): r for r in rows if r["frozen_encoder_layers"] == 0}
    for r in rows:
        base = baselines.get((r["shape"], r["method"], r["device"]))
        r["baseline"] = "frozen_encoder_layers=0" if base else None
        r["speedup_steps"] = round(base["seconds_per_step"] / r["seconds_per_step"], 2) if base else None
        r["speedup_first_epoch"] = round(base["first_epoch_seconds"] / r["first_epoch_seconds"], 2) if base else None
        r["speedup_later_epochs"] = round(base["epoch_seconds"] / r["epoch_seconds"], 2) if base else None


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base", help="whisper-base (default) or whisper-small")
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, plus cuda if present)")
    parser.add_argument("--methods", nargs="+", default=["lora", "full"], choices=["lora", "full"])
    parser.add_argument(
        "--frozen-encoder-layers", nargs="+", type=int, default=None, metavar="K",
        help="encoder layers frozen and cached (default: 0, 2/3 and all of them: 0 4 6 for base, 0 8 12 for small); "
        "0, the baseline, is always measured",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="clips per step (default 4 on CPU, 16 on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 2 on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--label-tokens", type=int, default=24, help="label length: a 2-5 s Habla segment")
    parser.add_argument("--epoch-clips", type=int, default=300, help="clips per epoch for the epoch-time columns")
    parser.add_argument("--cache-clips", type=int, default=8, help="clips whose cached states are timed (at least a batch)")
    parser.add_argument("--cache-batch-size", type=int, default=8, help="batch of the states computation (TrainOptions.eval_batch_size)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast on the GPU")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    frozen = sorted(set(args.frozen_encoder_layers if args.frozen_encoder_layers is not None else default_frozen_layers(shape)) | {0})
    if frozen[0] < 0:
        parser.error(f"--frozen-encoder-layers must be 0 or more, not {frozen[0]}")
    if frozen[-1] > shape["encoder_layers"]:
        parser.error(f"--frozen-encoder-layers {frozen[-1]}: whisper-{args.shape} has {shape['encoder_layers']} encoder layers")
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA GPU here: skipping cuda", file=sys.stderr)
        devices = [d for d in devices if d != "cuda"]

    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    if torch.cuda.is_available():
        where += f"; GPU {torch.cuda.get_device_name(0)}"
    print(f"whisper-{args.shape}-shaped model, RANDOM weights (speed depends on shapes, not values); {where}")
    print(f"torch {torch.__version__}; batch of 30-s windows, {args.label_tokens} label tokens; epoch = {args.epoch_clips} clips")
    load_before = _load()
    rows = []
    for device in devices:
        saved = args.batch_size, args.steps
        args.batch_size = args.batch_size or (16 if device == "cuda" else 4)
        args.steps = args.steps or (20 if device == "cuda" else 2)
        for method in args.methods:
            for k in frozen:
                rows.append(measure(method, device, args, k))
                if device == "cuda":
                    torch.cuda.empty_cache()
                r = rows[-1]
                print(
                    f"  measured {r['method']} K={k} on {device}: {r['seconds_per_step']} s/step, "
                    f"cache {r['cache_seconds_per_clip']} s/clip (load {_load()})", file=sys.stderr,
                )
        args.batch_size, args.steps = saved
    add_speedups(rows)
    print(f"load average (1, 5, 15 min): {load_before} before, {_load()} after; "
          "speed-up = K=0 row (same shape, method, device) / this row, measured in this run")
    header = (
        f"{'shape':<15}{'method':<14}{'device':<7}{'precision':<15}{'K':>3}{'batch':>6}{'s/step':>9}{'clips/s':>9}"
        f"{'cache s/clip':>13}{'epoch1 (s)':>11}{'epoch2+ (s)':>12}{'x steps':>8}{'x epoch1':>9}{'trainable M':>12}{'GPU GiB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        gpu = "-" if r["peak_gpu_gib"] is None else f"{r['peak_gpu_gib']:.1f}"
        k = r["frozen_encoder_layers"]
        print(
            f"{r['shape']:<15}{r['method']:<14}{r['device']:<7}{r['precision']:<15}{k:>3}{r['batch']:>6}"
            f"{r['seconds_per_step']:>9.2f}{r['clips_per_second']:>9.2f}{r['cache_seconds_per_clip']:>13.3f}"
            f"{r['first_epoch_seconds']:>11.0f}{r['epoch_seconds']:>12.0f}"
            f"{r['speedup_steps']:>8.2f}{r['speedup_first_epoch']:>9.2f}{r['trainable_params_m']:>12.2f}{gpu:>8}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
