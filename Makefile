# medhpc -- `make demo` runs the main job, `make test` the test suite. Both create the virtual
# environment .venv on first use (pinned versions from requirements-pinned.txt) and build the
# compiled extension; later runs rebuild only when a source changed.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= demo-out
PYTEST_ARGS ?=

# nvcc 13.0 lives here on the project's machines; without CUDA_HOME torch guesses /usr/local.
CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)
export CUDA_HOME
export MAX_JOBS ?= 2

EXT_SOURCES := $(shell find csrc -type f) setup.py pyproject.toml

.PHONY: setup check demo test selftest bench clean

$(VENV)/.deps: requirements-pinned.txt requirements-refs.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-pinned.txt
	# Attack references for the parity tests: --no-deps, see requirements-refs.txt.
	$(PY) -m pip install -q --no-deps -r requirements-refs.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps $(EXT_SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.built

demo: setup
	$(PY) -m medhpc info
	$(PY) -m medhpc.sweep run medhpc/configs/sweep-demo.yaml --set out=$(DEMO_DIR)/sweep
	@cat $(DEMO_DIR)/sweep/report/summary.md; echo "report (tables, figures, gallery): open $(DEMO_DIR)/sweep/report/index.html in a browser (index.md for a forge)"

# The static checks first (seconds), then the suite: CI runs exactly this.
check: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: check
	$(PY) -m pytest $(PYTEST_ARGS)

# The node self-test: on the CPU at small sizes; `make selftest SELFTEST_ARGS=--gpu` on a GPU node.
SELFTEST_ARGS ?=
selftest: setup
	$(PY) -m medhpc selftest $(SELFTEST_ARGS)

bench: setup
	$(PY) -m pytest benchmarks --benchmark-only $(PYTEST_ARGS)

clean:
	rm -rf build $(DEMO_DIR) medhpc/_C*.so *.egg-info
