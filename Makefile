# The README's two commands are `make study` (set up, then run the default study) and
# `make test` (set up, then run the tests). Both create ./.venv on first use.
PYTHON ?= python3
VENV ?= .venv
# torch is installed before nncme and nncme is built against it (--no-build-isolation).
# 2.13.0 is the CPU wheel on this project's machines; any torch >= 2.4 works.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.nncme-installed
SOURCES := Makefile pyproject.toml CMakeLists.txt $(shell find csrc cmake build_backend -type f -not -name "*.pyc" 2>/dev/null)

.PHONY: setup study test test-fast test-wheel lint bench clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja \
		numpy scipy matplotlib tqdm xarray pytest pytest-xdist "ruff==0.17.6" "python-libsbml>=5.20" \
		"emcee>=3.1"
	$(BIN)/python -m pip install -q --no-build-isolation -Cbuild-dir=build/{wheel_tag} -e .
	touch $@

study: setup
	$(BIN)/nncme study

# The tests run over one worker per core (pytest-xdist), a file to a worker at a time, so a
# file's module fixtures are built once (conftest.py gives each worker its share of threads).
PYTEST_PARALLEL := -n auto --dist loadfile

test: setup
	$(BIN)/ruff check
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)

# The README's pip recipe: a regular wheel built with --no-build-isolation, installed into a
# fresh venv and used from outside the source tree (CI runs it after `make test`).
test-wheel: setup
	.ci/test-wheel $(BIN)/python

test-fast: setup
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) -m "not slow"

lint: setup
	$(BIN)/ruff check
	$(BIN)/ruff format --check

clean:
	rm -rf build $(VENV)
