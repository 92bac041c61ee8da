# The whole set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
# The CPU build of PyTorch; installed before the project so no requirement can pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: serve test install dev benchmarks clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

serve: install
	$(BIN)/openseek-nanochat serve --host $(HOST) --port $(PORT) --workers $(WORKERS)

test: dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

benchmarks: dev
	$(BIN)/python benchmarks/convert.py

clean:
	rm -rf $(VENV) .pytest_cache
