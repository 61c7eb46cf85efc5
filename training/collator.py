"""Batches for the Trainer: the encoder's input (or its cached output) stacked, labels padded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class SpeechCollator:
    """Stack each row's ``input_features``; pad labels with -100 so padding is not learnt.

    ``input_features`` are the encoder's input: log-mel, or with the lower encoder layers frozen their
    cached output, which the encoder then takes as its input (``training.encoder_cache.run_upper_layers``).

    The tokenizer puts <|startoftranscript|> first; the model prepends it again when shifting labels
    right, so it is dropped here (as in transformers' Whisper fine-tuning example).
    """

    pad_token_id: int
    decoder_start_token_id: int

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        inputs = {"input_features": torch.from_numpy(_stack(features, "input_features"))}
        labels = [list(np.asarray(f["labels"], dtype=np.int64)) for f in features]
        if labels and all(seq and seq[0] == self.decoder_start_token_id for seq in labels):
            labels = [seq[1:] for seq in labels]
        longest = max(len(seq) for seq in labels)
        padded = torch.full((len(labels), longest), -100, dtype=torch.long)
        for i, seq in enumerate(labels):
            padded[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return {**inputs, "labels": padded}


def _stack(features: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    # float32 whatever the rows hold (cached states are float16)
    return np.stack([np.asarray(f[key], dtype=np.float32) for f in features])
