"""Where habla-ls keeps Kokoro's files on this machine: the reassembled model and the extra voice packs.

A module of its own because both :mod:`synth.kokoro` (the model) and :mod:`synth.voice_packs` (the
packs, which the model loads) keep their files there.
"""

from __future__ import annotations

from pathlib import Path

from ml_backend.whisper_files import cache_dir as habla_ls_cache


def cache_dir() -> Path:
    """``<habla-ls cache>/kokoro`` (``$HABLA_LS_CACHE`` or ``~/.cache/habla-ls``)."""
    return habla_ls_cache() / "kokoro"
