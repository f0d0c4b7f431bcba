# Two entry points for a fresh machine: `make demo` (the quick study) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the shared CIFAR-10 tree when it is beside the project; otherwise prunelab downloads
# CIFAR-10 into its cache folder
DATA ?= $(wildcard ../shared/data/cifar10-jpeg)
OUT ?= runs/quick

.PHONY: setup demo test lint clean

$(BIN)/prunelab: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,onnx]'
	touch $(BIN)/prunelab

setup: $(BIN)/prunelab

demo: setup
	$(BIN)/prunelab run quick $(if $(DATA),--data-dir $(DATA)) --out $(OUT)

test: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs
