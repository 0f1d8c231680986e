# soundops: the README's two commands are `make demo` and `make test`.
# Both create .venv from requirements.lock first (once; again when the lock changes).

PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV_VERSION := 0.13.9
export PATH := $(CURDIR)/$(BIN):$(PATH)
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup demo test lint typecheck unit browser bench clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): requirements.lock pyproject.toml
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || \
	  { echo "soundops needs Python 3.11; set PY=/path/to/python3.11 (found $(PY))." >&2; exit 1; }
	@$(PY) -m venv $(VENV) || \
	  { echo "Python's venv module is missing: install it with 'sudo apt-get install python3.11-venv' and run make again." >&2; rm -rf $(VENV); exit 1; }
	$(BIN)/python -m pip install -q uv==$(UV_VERSION)
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	@touch $@

setup: $(STAMP)  ## create .venv with the locked dependencies and soundops itself

demo: setup  ## set up, then the build flow on the default project (phrase from text) (all stages, MLflow, registry, DVC push)
	@git rev-parse --git-dir >/dev/null 2>&1 || { echo "run make demo inside the git clone" >&2; exit 1; }
	$(BIN)/soundops params check
	$(BIN)/soundops run build

lint: setup  ## ruff, and the import contracts of pyproject.toml (lint-imports)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: setup  ## mypy (strict)
	$(BIN)/mypy

browser:  ## Debian's chromium for the browser test (installed when missing and run as root)
	@command -v chromium >/dev/null 2>&1 || [ -n "$$SOUNDOPS_CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "the browser test needs Debian's chromium: run 'sudo apt-get install chromium' and make test again." >&2; exit 1; \
	  fi; }

unit: setup browser  ## pytest
	$(BIN)/pytest

test: lint typecheck unit  ## everything CI runs

bench: setup  ## benchmarks that need no real-audio folder (after make demo)
	$(BIN)/python benchmarks/train_extract_speed.py
	$(BIN)/python benchmarks/detection_check.py

lock:  ## re-resolve requirements.lock from pyproject.toml
	uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --override overrides.txt -o requirements.lock

clean:  ## remove the venv and pipeline outputs (the DVC cache and remote stay)
	rm -rf $(VENV) data/generated data/ingest data/validate data/split
