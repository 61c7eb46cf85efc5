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

# espeak-ng and sox make Spanish test audio; chromium runs the browser test (tests/test_browser.py), with
# DejaVu for the glyphs its screenshots need. Installed with apt-get where we are root and they are missing.
system-deps:
	@missing=""; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null 2>&1 || missing="$$missing sox"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "please install:$$missing (sudo apt-get install$$missing)"; exit 1; fi; \
	fi

# HABLA_LS_REQUIRE_BROWSER: here a missing browser fails the browser test instead of skipping it.
test: venv system-deps
	HABLA_LS_REQUIRE_BROWSER=1 $(PY) -m pytest -q

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
