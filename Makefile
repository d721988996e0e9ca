# The two commands that matter: `make run` (the chat at http://127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8000

.PHONY: install system-deps run test check format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/chat dev --port $(PORT)

# System packages the suite needs (Chromium for the browser tests, PostgreSQL, Redis).
system-deps:
	@scripts/install-system-deps

test: install system-deps
	$(BIN)/pytest

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The benchmark: its own PostgreSQL, two instances, baselines; a table, JSON and a plot
# under bench/results/. `make bench ARGS=--full` adds the 10M-message history figure.
bench: install
	$(BIN)/python -m bench $(ARGS)

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
