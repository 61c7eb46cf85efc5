"""Keep transformers' per-call warnings out of what a user reads, for one block of code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def transformers_errors_only() -> Iterator[None]:
    """transformers logs only errors inside the block; its verbosity before is restored after."""
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)
