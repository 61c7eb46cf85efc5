"""Encoder states computed once, for training with the lower part of Whisper's encoder frozen.

``frozen_encoder_layers = N`` freezes the encoder's convolutional stem and its first N layers. Their
output for a clip is then the same on every step of every epoch, yet the Trainer would recompute it each
time: the encoder reads 30 s of padded log-mel while the decoder reads one sentence, so on a CPU the
encoder's forward and backward passes are nearly all of a whisper-base step. Here each split's states
after layer N are computed once, in batches, stored as float16 in a ``.npy`` file under the run dir
(memory-mapped, so thousands of clips need not fit in RAM; a resumed run reuses it). While training, the
encoder takes them as its input and runs only its upper layers and its final norm on them
(:func:`run_upper_layers`); with every layer frozen that is the norm alone. One shape of cached state for
every N: the hidden states after layer N, before the norm. Weight names and saved files are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

STATES_PREFIX = "encoder-states-"
STATES_FORMAT = 2  # 2: before the final norm for every N (1 kept a wholly frozen encoder's output)


_ENCODER_LAYER = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)\.")


def trainable_targets(model: Any, modules: Sequence[str], frozen_layers: int) -> list[str]:
    """Full names of the LoRA target modules outside the frozen part: the upper encoder layers and the decoder."""
    wanted = set(modules)
    names = []
    for name, _ in model.named_modules():
        if name.rsplit(".", 1)[-1] not in wanted:
            continue
        if ".encoder." in f".{name}":
            layer = _ENCODER_LAYER.search(name)
            if layer is None or int(layer.group(1)) < frozen_layers:
                continue
        names.append(name)
    return names


def freeze_lower_encoder(model: Any, frozen_layers: int) -> None:
    """No gradient for the stem and the first ``frozen_layers`` encoder layers (all of it when that many or more)."""
    encoder = model.get_encoder()
    if frozen_layers >= len(encoder.layers):
        frozen = [encoder]
    else:
        frozen = [encoder.conv1, encoder.conv2, encoder.embed_positions, *encoder.layers[:frozen_layers]]
    for module in frozen:
        for parameter in module.parameters():
            parameter.requires_grad_(False)


def lower_states(encoder: Any, features: Any, frozen_layers: int) -> Any:
    """The encoder's hidden states after its first ``frozen_layers`` layers (all of them at most), before its
    final norm."""
    import torch

    hidden = torch.nn.functional.gelu(encoder.conv1(features))
    hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
    positions = torch.arange(encoder.embed_positions.num_embeddings, device=hidden.device)
    hidden = hidden + encoder.embed_positions(positions)
    for layer in encoder.layers[:frozen_layers]:
        hidden = layer(hidden, None)
    return hidden


def run_upper_layers(encoder: Any, frozen_layers: int) -> Any:
    """Make ``encoder`` take the cached states as its ``input_features`` and run only the layers above them.

    Returns a function that restores the encoder's own forward (before saving, interpolating or any
    decoding of real audio). With every layer frozen only the (frozen) final norm runs.
    """
    from transformers.modeling_outputs import BaseModelOutput

    def forward(input_features: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
        hidden = input_features.to(encoder.layer_norm.weight.dtype)
        for layer in encoder.layers[frozen_layers:]:
            hidden = layer(hidden, None)
        return BaseModelOutput(last_hidden_state=encoder.layer_norm(hidden))

    encoder.forward = forward

    def restore() -> None:
        encoder.__dict__.pop("forward", None)

    return restore


def _model_stamp(model_dir: Path) -> list[Any]:
    stamp: list[Any] = [str(Path(model_dir).resolve())]
    for name in sorted(os.listdir(model_dir)):
        if name.endswith((".safetensors", ".bin", "config.json")):
            info = (Path(model_dir) / name).stat()
            stamp.append([name, info.st_size, info.st_mtime_ns])
    return stamp


def states_path(run_dir: Path, split: str, dataset: Any, model_dir: Path, frozen_layers: int) -> Path:
    """Where a split's states live: named by the rows, the weights and the layer, so stale ones are never read."""
    key = json.dumps([split, getattr(dataset, "_fingerprint", None), len(dataset), _model_stamp(model_dir), frozen_layers,
                      STATES_FORMAT])
    return Path(run_dir) / f"{STATES_PREFIX}{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def compute_states(
    model: Any, dataset: Any, path: Path, *, frozen_layers: int, batch_size: int = 8, progress: bool = False,
    desc: str = "encoder states",
) -> np.ndarray:
    """:func:`lower_states` of every row of ``dataset`` (``input_features``), memory-mapped.

    Written to a temporary file and renamed when complete: an interrupted computation is never read.
    """
    import torch

    path = Path(path)
    if path.is_file():
        try:
            states = np.load(path, mmap_mode="r")
            if states.shape[0] == len(dataset):
                return states
        except (OSError, ValueError):
            pass  # unreadable: computed again below
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{path.name.rsplit('-', 1)[0]}-*.npy"):
        stale.unlink(missing_ok=True)  # states of the same split from other rows or weights
    encoder = model.get_encoder()
    device = next(encoder.parameters()).device
    dtype = next(encoder.parameters()).dtype
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    states = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(dataset), desc=desc, unit="clip")
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(dataset), batch_size):
                rows = dataset[start : start + batch_size]["input_features"]
                features = torch.tensor(np.stack([np.asarray(r, dtype=np.float32) for r in rows]))
                hidden = lower_states(encoder, features.to(device=device, dtype=dtype), frozen_layers)
                block = hidden.float().cpu().numpy().astype(np.float16)
                if states is None:
                    states = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(dataset), *block.shape[1:]))
                states[start : start + len(block)] = block
                if bar is not None:
                    bar.update(len(block))
        if states is None:
            raise ValueError("no rows to encode")
        states.flush()
        del states
        os.replace(tmp, path)
    finally:
        encoder.train(was_training)
        if bar is not None:
            bar.close()
        tmp.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def remove_states(run_dir: Path) -> None:
    for stale in Path(run_dir).glob(f"{STATES_PREFIX}*.npy"):
        stale.unlink(missing_ok=True)


class EncoderStatesDataset:
    """Rows of cached states and labels, as :class:`training.collator.SpeechCollator` reads them: the states are
    the ``input_features`` of an encoder under :func:`run_upper_layers`."""

    def __init__(self, states: np.ndarray, labels: Sequence[Sequence[int]]) -> None:
        if len(states) != len(labels):
            raise ValueError(f"{len(states)} encoder states for {len(labels)} label rows")
        self.states = states
        self.labels = [np.asarray(seq, dtype=np.int64) for seq in labels]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"input_features": self.states[index], "labels": self.labels[index]}


def cached_splits(
    model: Any, splits: Mapping[str, Any], model_dir: Path, run_dir: Path, *, frozen_layers: int, batch_size: int = 8,
    progress: bool = False,
) -> tuple[EncoderStatesDataset | None, EncoderStatesDataset | None]:
    """The train and validation rows of ``splits`` as cached encoder states (None for a split it lacks).

    Under accelerate/torchrun the main process computes them; the others then read its files.
    """
    import torch
    from accelerate import PartialState

    data: dict[str, EncoderStatesDataset | None] = {}
    with PartialState(cpu=not torch.cuda.is_available()).main_process_first():
        for split in ("train", "validation"):
            if split not in splits:
                data[split] = None
                continue
            rows = splits[split]
            path = states_path(run_dir, split, rows, model_dir, frozen_layers)
            states = compute_states(
                model, rows.with_format("numpy", columns=["input_features"]), path, frozen_layers=frozen_layers,
                batch_size=batch_size, progress=progress, desc=f"encoder states ({split})",
            )
            data[split] = EncoderStatesDataset(states, rows["labels"])
    return data["train"], data["validation"]


def upper_encoder_trainer(trainer_class: Any) -> Any:
    """``trainer_class`` validating from cached lower states, for a model under :func:`run_upper_layers`."""

    class UpperEncoderTrainer(trainer_class):
        """Validation from cached lower states: ``generate`` reads ``input_features`` as log-mel (it pads
        them to 30 s), so the encoder's upper layers run here and the decoder gets their output."""

        def prediction_step(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            import torch
            from transformers.modeling_outputs import BaseModelOutput

            inputs = dict(inputs)
            lower = inputs.pop("input_features").to(self.args.device)
            with torch.no_grad():
                encoded = model.get_encoder()(lower).last_hidden_state
            inputs["encoder_outputs"] = BaseModelOutput(last_hidden_state=encoded)
            return super().prediction_step(model, inputs, *args, **kwargs)

    return UpperEncoderTrainer
