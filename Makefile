# The two commands: `make demo` and `make test`. Each sets up what it needs on a fresh machine:
# the virtualenv and Python packages here, Debian packages and JVM jars through `erpsync stack up`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit integration stack-up stack-down clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

# DEMO_ARGS: e.g. "--orders 12 --rate 10", the short mode the tests run on a fresh stack home.
demo: $(STAMP)
	$(BIN)/erpsync stack up
	$(BIN)/erpsync demo $(DEMO_ARGS)

test: lint typecheck stack-up
	$(BIN)/erpsync schemas check
	$(BIN)/erpsync mappings check
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check erpsync flows schemas connectors state tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

stack-up: $(STAMP)
	$(BIN)/erpsync stack up

stack-down: $(STAMP)
	$(BIN)/erpsync stack down

unit: $(STAMP)
	$(BIN)/pytest tests/unit

clean: stack-down
	rm -rf .erpsync $(VENV)
