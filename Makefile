# habla-ls: `make demo` and `make test` work on a fresh machine (Debian, Python 3.11, no GPU needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The CPU build of torch, pinned exactly: anything looser lets pip pull the CUDA build (several GB).
TORCH := torch==2.13.0

.PHONY: help venv system-deps test test-fast lint demo bench clean

help:
	@echo "make demo   - set everything up and run the whole loop on bundled defaults (offline)"
	@echo "make test   - set everything up and run the test suite"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks in bench/ (long)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[server,models,synth,dev]'
	touch $(STAMP)

venv: $(STAMP)

# espeak-ng and sox make Spanish test audio. Installed with apt-get where we are root and they are missing.
system-deps:
	@if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq espeak-ng sox >/dev/null; \
	  else echo "please install espeak-ng and sox (sudo apt-get install espeak-ng sox)"; exit 1; fi; \
	fi

test: venv system-deps
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not quality"

lint: venv
	$(PY) -m ruff check .

demo: venv system-deps
	$(VENV)/bin/habla-ls demo

bench: venv system-deps
	$(PY) bench/push_pull.py
	$(PY) bench/engine_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
