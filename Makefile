# Two entry points for a fresh machine: `make demo` (the quick study) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/cifar10-jpeg
OUT ?= runs/quick

.PHONY: setup demo test lint clean

$(BIN)/prunelab: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/prunelab

setup: $(BIN)/prunelab

demo: setup
	$(BIN)/prunelab run recipes/quick.toml --data-dir $(DATA) --out $(OUT)

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
