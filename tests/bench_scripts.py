"""The bench's scripts are files, not package modules: how the tests load them."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench_script(relative: str, name: str) -> ModuleType:
    """``bench/<relative>`` as module ``name``, left in ``sys.modules``: dataclasses look their module up
    there while the class is built."""
    spec = importlib.util.spec_from_file_location(name, BENCH / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


@contextmanager
def bench_script(relative: str, name: str) -> Iterator[ModuleType]:
    """:func:`load_bench_script`, taken out of ``sys.modules`` again afterwards."""
    module = load_bench_script(relative, name)
    try:
        yield module
    finally:
        sys.modules.pop(name, None)
