# Thin aliases over nox sessions and the CLI; `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help run test lint typecheck bench jaeger clean

help:
	@echo "make run    - both APIs over PostgreSQL and Redis (embedded unless URLs are set), demo data"
	@echo "make test   - lint, type check and the full test suite (what CI runs)"
	@echo "make bench  - benchmarks: bench/results.json, docs/benchmarks.md and its chart"
	@echo "make lint   - ruff"
	@echo "make jaeger - Jaeger all-in-one for traces (needs Docker)"
	@echo "make clean  - remove virtualenvs, embedded server data and caches"

# One bootstrap virtualenv with the project and nox; nox builds its own per session.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[binary,embedded,servers]' --group dev
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m securecache dev --serve

test: $(STAMP)
	$(BIN)/nox -s lint typecheck tests tests_system tests_cluster

lint: $(STAMP)
	$(BIN)/nox -s lint

typecheck: $(STAMP)
	$(BIN)/nox -s typecheck

bench: $(STAMP)
	$(BIN)/nox -s bench

jaeger:
	@command -v docker >/dev/null || { echo "jaeger: Docker is not installed here"; exit 1; }
	docker run --rm --name securecache-jaeger -p 16686:16686 -p 4318:4318 jaegertracing/all-in-one:latest

clean:
	rm -rf $(VENV) .nox .securecache .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
