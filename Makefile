# Two commands set up everything on a fresh Linux machine with Python 3.11:
#   make demo   - create .venv, install, run a night's batch on the embedded defaults
#   make test   - create .venv if needed, install, run the whole test suite

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean compose-check bundle

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo, on the embedded defaults (SQLite and Redis in var/demo/data): a tiny model
# trained on a labelled synthetic history (or reused from var/cache/demo-model), then a
# synthetic night with a few bad files through `mdf run-batch`. See scripts/demo.py.
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

# The compose stack built offline and run for real: see scripts/compose_check.py. Needs a
# Docker daemon, or root to start one; about ten minutes on two cores; not run by CI.
# UPGRADE_FROM=REVISION starts on that release's images and upgrades mid-night.
compose-check: $(STAMP)
	$(BIN)/python scripts/compose_check.py $(if $(UPGRADE_FROM),--upgrade-from $(UPGRADE_FROM))

# What an air-gapped site needs, with checksums: see scripts/bundle.py.
bundle: $(STAMP)
	$(BIN)/python scripts/bundle.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
