# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.requirements-installed

.PHONY: run test lint bench bench-soak bench-scaling browser-deps

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
	$(BIN)/ruff check gateway_core proxy pages tests bench app.py app_support.py
	$(BIN)/ruff format --check gateway_core proxy pages tests bench app.py app_support.py

# wrk (Debian package) drives the load; without it the benchmark falls back
# to a slower Python load generator and says so in its report.
bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get install -y -qq wrk >/dev/null 2>&1 || true)
	$(BIN)/python -m bench.proxy_overhead

# One Gatewayz worker under 1,000,000 requests; prints RSS growth after warm-up.
bench-soak: $(STAMP)
	$(BIN)/python -m bench.memory_soak

# Throughput with 1 up to the CPU count of uvicorn workers, and the ratio to one.
bench-scaling: $(STAMP)
	$(BIN)/python -m bench.worker_scaling
