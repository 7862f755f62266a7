# The two commands: `make demo` and `make test`. Each creates the virtual
# environment it needs; nothing else is done by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/parcelout demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# parcelout against its peers (needs ../shared/bench beside the repository);
# prints the tables, writes benchmarks/results.md and benchmarks/ratios.png.
# `make bench BENCH_ARGS='--scale 0.1 --repeat 1'` for a quick pass.
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf .venv .venv-* build dist
