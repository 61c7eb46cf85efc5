"""A LoRA adapter merged into its base model, without peft's deprecation noise in what a user reads."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def peft_deprecations_silenced() -> Iterator[None]:
    """Inside the block, peft's reads of transformers' deprecated attributes warn no one."""
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`: noise, not news.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def merge_adapter(base: Any, adapter_dir: Path) -> Any:
    """``base`` with the adapter's deltas added into its weights: a plain transformers model again."""
    from peft import PeftModel

    with peft_deprecations_silenced():
        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
