# habla-ls: `make demo` and `make test` work on a fresh machine (Debian, Python 3.11, no GPU needed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# The CPU build of torch, pinned exactly: anything looser lets pip pull the CUDA build (several GB).
TORCH := torch==2.13.0

.PHONY: help venv bare-venv system-deps postgres-deps kokoro-voices test test-postgres test-fast lint lint-floors demo bench clean

help:
	@echo "make demo   - set everything up and run the whole loop on bundled defaults (offline)"
	@echo "make test   - set everything up and run the test suite"
	@echo "make test-postgres - the Label Studio integration tests again, with Label Studio on PostgreSQL"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks in bench/ (long)"
	@echo "make kokoro-voices - the 54 Kokoro v1.0 voice packs (npm kokoro-js, sha256-pinned), for male training voices"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[server,models,synth,dev]'
	touch $(STAMP)

venv: $(STAMP)

# `pip install .` with no extras, as a user whose Label Studio runs elsewhere installs habla-ls: the test
# tests/test_bare_install.py pushes and pulls with it against a real Label Studio.
BARE_VENV ?= .venv-bare
BARE_STAMP := $(BARE_VENV)/.installed
$(BARE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BARE_VENV)
	$(BARE_VENV)/bin/python -m pip install -q --upgrade pip
	$(BARE_VENV)/bin/python -m pip install -q $(TORCH)
	$(BARE_VENV)/bin/python -m pip install -q .
	touch $(BARE_STAMP)

bare-venv: $(BARE_STAMP)

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

# Debian's PostgreSQL server binaries (initdb, postgres): the tests start a throw-away cluster of their own
# (as the postgres user when run as root), never the system's service.
postgres-deps:
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing postgresql"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	  else echo "please install: postgresql (sudo apt-get install postgresql)"; exit 1; fi; \
	fi

# Optional: Kokoro v1.0's other 49 voices (male ones among them) for training audio; npm fetches the pinned
# kokoro-js tarball once, its packs go to the habla-ls cache (synth/voice_packs.py).
kokoro-voices: venv
	$(PY) -m synth.voice_packs

# HABLA_LS_REQUIRE_BROWSER: here a missing browser fails the browser test instead of skipping it.
test: venv bare-venv system-deps postgres-deps lint-floors
	HABLA_LS_REQUIRE_BROWSER=1 HABLA_LS_BARE_VENV=$(BARE_VENV) $(PY) -m pytest -q

# The floors (import-linter's contracts in pyproject.toml) and the declared dependencies (deptry).
lint-floors: venv
	$(VENV)/bin/lint-imports
	$(VENV)/bin/deptry .

# The Label Studio integration tests where the database matters, on a real PostgreSQL: push and pull
# (imports, lookups by ext_id, incremental pulls, a push killed mid-import), `labelstudio up`/`down`
# (servers stopped by signal), prefill and round, the backend against Label Studio. Only the tests that start
# Label Studio (`-m labelstudio`): the others in these files do not touch a database and ran in `make test`.
POSTGRES_TESTS := tests/test_push.py tests/test_push_failures.py tests/test_push_document_root.py tests/test_pull.py tests/test_ls_server.py tests/test_prefill.py \
	tests/test_round.py tests/test_backend_labelstudio.py
test-postgres: venv system-deps postgres-deps
	HABLA_LS_TEST_DB=postgresql $(PY) -m pytest -q -m labelstudio $(POSTGRES_TESTS)

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
	rm -rf $(VENV) $(BARE_VENV) .pytest_cache .ruff_cache
