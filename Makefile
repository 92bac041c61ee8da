# The whole set-up on a fresh machine: `make serve` and `make test` (CI: `make lint test`).
# Dependencies install from the lock files at their exact versions; `make lock` regenerates those from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
# `make serve INPUT_ROOTS=/data:/mnt/corpora`: folders jobs may read inputs from (default: the data dir only).
INPUT_ROOTS ?=
# The CPU build of PyTorch; installed before the project so no requirement can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
UV_SPEC ?= uv==0.13.9
# Extra flags for `uv pip compile`, e.g. `make lock LOCK_FLAGS=--upgrade` to move every pin to the newest release.
LOCK_FLAGS ?=
LOCK := $(BIN)/uv pip compile -q --python-version 3.11 --python-platform linux --annotation-style line \
	--custom-compile-command "make lock"

.PHONY: serve test lint format lock install dev benchmarks clean
MAKEFLAGS += --no-print-directory

$(BIN)/python:
	@echo "creating $(VENV)"
	@$(PYTHON) -m venv $(VENV) || { echo "$(PYTHON) -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
	@$(PIP) --upgrade pip

# torch first (see TORCH_SPEC), then the lock, then the project itself without resolving anything. setuptools adds a
# notice to every editable install of a package-dir layout (folders named like the packages may shadow them): nothing
# to act on, so that one is filtered out; every other warning still shows.
$(VENV)/.installed: requirements.lock pyproject.toml | $(BIN)/python
	@echo "installing $(TORCH_SPEC), requirements.lock and the project into $(VENV)"
	@$(PIP) "$(TORCH_SPEC)"
	@$(PIP) -r requirements.lock
	@PYTHONWARNINGS="ignore:Editable installation" $(PIP) --no-deps -e .
	@touch $@

$(VENV)/.installed-dev: requirements-dev.lock $(VENV)/.installed
	@echo "installing requirements-dev.lock into $(VENV)"
	@$(PIP) -r requirements-dev.lock
	@touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

serve: install
	$(if $(INPUT_ROOTS),OPENSEEK_NANOCHAT_INPUT_ROOTS="$(INPUT_ROOTS)") $(BIN)/openseek-nanochat serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

# Tests that drive Chromium or PostgreSQL's server need the system package: installed here where root can (apt-get),
# skipped otherwise, with the command that installs them printed at the end.
test: dev
	@$(BIN)/python tests/syspackages.py --install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: dev
	$(BIN)/ruff check --quiet --output-format concise .
	$(BIN)/ruff format --check --quiet --output-format concise .

format: dev
	$(BIN)/ruff format --quiet .
	$(BIN)/ruff check --quiet --fix .

# The runtime lock is resolved first and the dev lock within it, so `make serve` and `make test` share every version.
# uv resolves from PyPI; pins already in a lock stay unless LOCK_FLAGS says otherwise.
lock: | $(BIN)/python
	@$(PIP) "$(UV_SPEC)"
	$(LOCK) $(LOCK_FLAGS) pyproject.toml -o requirements.lock
	$(LOCK) $(LOCK_FLAGS) pyproject.toml --extra dev --extra postgres -c requirements.lock --override lock-overrides.txt \
		-o requirements-dev.lock

benchmarks: dev
	$(BIN)/python benchmarks/convert.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
