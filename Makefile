# The two commands of the README:
#   make book   set up .venv (if missing), fetch MathJax, build the whole book at the `cpu` profile
#   make test   set up .venv (if missing), fetch MathJax, unit tests, every notebook at `smoke` (nbval),
#               and a book build at `smoke` with warnings as errors into _build_smoke/
# Other targets: make venv | mathjax | unit | nbval | book-smoke | screenshots | clean
# Variables: PYTHON (the interpreter that makes .venv, Python 3.11+), BUILD_DIR, JOBS (xdist workers).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
JOBS ?= 2
BUILD_DIR := _build
SMOKE_BUILD_DIR := _build_smoke
MATHJAX := _vendor/mathjax/.mathjax-version
INSTALLED := $(VENV)/.installed

.PHONY: book test venv mathjax unit nbval book-smoke screenshots clean

book: $(INSTALLED) $(MATHJAX)
	PYTHON=$(PY) scripts/build_book.sh cpu .

test: $(INSTALLED) $(MATHJAX)
	PYTHON=$(PY) JOBS=$(JOBS) SMOKE_BUILD_DIR=$(SMOKE_BUILD_DIR) scripts/run_tests.sh

venv: $(INSTALLED)

# Re-installs when requirements.txt or pyproject.toml change. `--no-deps` for the package itself: its
# loose ranges must never let pip replace the pinned torch.
$(INSTALLED): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install -e . --no-deps
	touch $@

mathjax: $(MATHJAX)

$(MATHJAX): scripts/fetch_mathjax.py
	$(PYTHON) scripts/fetch_mathjax.py _vendor/mathjax

unit: $(INSTALLED)
	$(PY) -m pytest -n $(JOBS) tests

nbval: $(INSTALLED)
	LAMB_PROFILE=smoke $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider book notebooks

book-smoke: $(INSTALLED) $(MATHJAX)
	PYTHON=$(PY) scripts/build_book.sh smoke $(SMOKE_BUILD_DIR)

screenshots:
	scripts/screenshot.sh $(BUILD_DIR)/html

clean:
	rm -rf $(BUILD_DIR) $(SMOKE_BUILD_DIR) _vendor
