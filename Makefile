# Two commands do all the set-up on a fresh machine: `make dev` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: dev test lint format bench bench-quick faults clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# Optional (see pyproject's `fast`): without a C compiler gunicorn keeps its Python parser.
	$(BIN)/python -m pip install --quiet -e '.[fast]' \
	  || echo "gunicorn-h1c did not build; gunicorn uses its own Python HTTP parser"
	touch $(STAMP)

dev: $(STAMP)
	$(BIN)/python -m webhook serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The fault suite alone (it is also part of `make test`).
faults: $(STAMP)
	$(BIN)/python -m pytest tests/faults $(PYTEST_ARGS)

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] \
	  && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) \
	  || { echo "make bench needs wrk: install it (apt-get install wrk)"; exit 1; }; }
	touch $(BENCH_STAMP)

# Not part of `make test`: minutes long, and its numbers are only meaningful on a quiet machine.
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py

bench-quick: $(BENCH_STAMP)
	$(BIN)/python bench/run.py --quick

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pgdata-test
