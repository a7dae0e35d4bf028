# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-installed

.PHONY: run test lint bench browser-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m gateway_core run

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check gateway_core proxy pages tests bench app.py
	$(BIN)/ruff format --check gateway_core proxy pages tests bench app.py

# wrk (Debian package) drives the load; without it the benchmark falls back
# to a slower Python load generator and says so in its report.
bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get install -y -qq wrk >/dev/null 2>&1 || true)
	$(BIN)/python -m bench.proxy_overhead
