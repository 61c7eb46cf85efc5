"""The house rules that tools alone do not state: no two modules import each other, and no module grows
past ~450 lines (the floors themselves are import-linter's contracts in pyproject.toml, which `make test`
runs with `lint-imports`, and the declared dependencies are deptry's)."""

from __future__ import annotations

from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("habla_ls", "training", "synth", "sync", "ml_backend")
MAX_LINES = 450
# Data, not logic: the sentence lists.
DATA_MODULES = {"synth/sentences.py"}


def test_no_two_modules_import_each_other():
    graph = grimp.build_graph(*PACKAGES)
    pairs = set()
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if module in graph.find_modules_directly_imported_by(imported):
                pairs.add(tuple(sorted((module, imported))))
    assert not pairs, f"modules importing each other: {sorted(pairs)}"


def test_no_module_is_over_450_lines():
    sources = [p for package in (*PACKAGES, "bench") for p in (ROOT / package).rglob("*.py")]
    assert len(sources) > 50
    long = {
        str(p.relative_to(ROOT)): n
        for p in sources
        if str(p.relative_to(ROOT)) not in DATA_MODULES and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split along their seams: {long}"
