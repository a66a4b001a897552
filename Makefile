# Development tasks. The README's two commands are `make quickstart` and `make test`.
#
# Everything runs in a virtual environment at $(VENV), created with $(PYTHON) when missing, and
# installed against constraints.txt (the versions CI is known to pass with). An install is redone
# only when setup.py, pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
SPHINX_OPTS ?= -W --keep-going -q

.PHONY: venv install quickstart docs lint pytest test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# robustfit alone (enough for the examples), and with the test and docs tools.
$(VENV)/.installed-core: setup.py pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: setup.py pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e ".[test,docs,diffusion]"
	touch $@ $(VENV)/.installed-core

venv: $(VENV)/.installed-dev

install: venv

quickstart: $(VENV)/.installed-core
	$(BIN)/python examples/quickstart.py

docs: $(VENV)/.installed-dev
	$(BIN)/python -m sphinx $(SPHINX_OPTS) -b html docs docs/_build/html

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

pytest: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q tests

# Docs with warnings as errors, lint, then the test suite.
test: $(VENV)/.installed-dev
	$(MAKE) docs
	$(MAKE) lint
	$(MAKE) pytest

clean:
	rm -rf docs/_build docs/generated quickstart_robustness.png
