"""What `habla-ls train` prints while it trains: tqdm's bar plus one readable line per log event.

transformers' own progress callback writes each log event as a Python dict
(``{'loss': '0.98', 'grad_norm': ...}``); a teacher running `habla-ls train` should read sentences instead.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from transformers.trainer_callback import ProgressCallback, TrainerCallback

log = logging.getLogger("training.train")


def describe_log(logs: dict[str, Any], step: int) -> str | None:
    """One line for one of the Trainer's log events, or None for one not worth a line."""
    if "eval_wer" in logs or "eval_loss" in logs:
        parts = [f"validation WER {logs['eval_wer']:.3f}" if "eval_wer" in logs else None,
                 f"loss {logs['eval_loss']:.3f}" if "eval_loss" in logs else None]
        return f"epoch {logs.get('epoch', 0):.0f}: " + ", ".join(p for p in parts if p)
    if "train_runtime" in logs:
        return f"trained {step} step(s) in {logs['train_runtime']:.0f} s (mean training loss {logs.get('train_loss', float('nan')):.3f})"
    if "loss" in logs:
        rate = f", learning rate {logs['learning_rate']:.2g}" if "learning_rate" in logs else ""
        return f"step {step} (epoch {logs.get('epoch', 0):.2f}): training loss {logs['loss']:.3f}{rate}"
    return None


def _line(state: Any, logs: dict[str, Any] | None) -> str | None:
    """The main process's line for a log event (other processes print nothing)."""
    if not state.is_world_process_zero or not logs:
        return None
    return describe_log({k: v for k, v in logs.items() if isinstance(v, int | float)}, state.global_step)


class ReadableProgress(ProgressCallback):
    """The usual progress bar; log events as :func:`describe_log` lines above it, on the main process only."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        line = _line(state, logs) if self.training_bar is not None else None
        if line:
            self.training_bar.write(line)


class ReadableLog(TrainerCallback):
    """Without a progress bar: the same lines through logging (shown with `habla-ls -v`), not printed dicts."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        line = _line(state, logs)
        if line:
            log.info("%s", line)


@contextlib.contextmanager
def library_bars(enabled: bool) -> Iterator[None]:
    """datasets' and transformers' own bars (feature caching, weight loading) shown only when ``enabled``.

    Without progress (an unattended round, a benchmark's --quiet), those bars are the only thing that would
    still draw carriage-return lines into a log file. The previous state is put back afterwards.
    """
    if enabled:
        yield
        return
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_were_on = not datasets.are_progress_bars_disabled()
    transformers_were_on = hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_were_on:
            datasets.enable_progress_bars()
        if transformers_were_on:
            hf_logging.enable_progress_bar()
