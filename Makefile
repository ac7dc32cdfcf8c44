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

# The demo, on the embedded defaults (SQLite and Redis in var/demo/data): a tiny
# model fine-tuned on a labelled synthetic history and promoted, then a new
# synthetic night delivered, queued and classified by a worker.
DEMO := var/demo
demo: export MDF_DATA_DIR := $(DEMO)/data
demo: export MDF_MODEL_DIR := $(DEMO)/model
demo: $(STAMP)
	rm -rf $(DEMO)
	$(BIN)/mdf db upgrade
	$(BIN)/mdf model init --preset tiny $(DEMO)/model
	$(BIN)/mdf synth $(DEMO)/history --images 64 --size 256 --seed 1
	$(BIN)/mdf ingest $(DEMO)/history --batch labelled-history
	$(BIN)/mdf labels import $(DEMO)/history-masks/masks.csv
	$(BIN)/mdf train --epochs 5
	$(BIN)/mdf models
	$(BIN)/mdf synth $(DEMO)/inbox --images 16 --size 256 --seed 2
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
