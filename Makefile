# Two commands set up everything on a fresh Linux machine with Python 3.11:
#   make demo   - create .venv, install, run a night's batch on the embedded defaults
#   make test   - create .venv if needed, install, run the whole test suite

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo: a synthetic night delivered to an inbox, a tiny model, and the whole
# pipeline on the embedded defaults (SQLite and Redis in var/demo/data).
DEMO := var/demo
demo: export MDF_DATA_DIR := $(DEMO)/data
demo: export MDF_MODEL_DIR := $(DEMO)/model
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/mdf db upgrade
	$(BIN)/mdf synth $(DEMO)/inbox --images 24 --size 256
	$(BIN)/mdf model init --preset tiny $(DEMO)/model
	$(BIN)/mdf ingest $(DEMO)/inbox --batch demo-night
	$(BIN)/mdf worker --burst
	$(BIN)/mdf status
	$(BIN)/mdf results --batch demo-night --limit 10

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
