# Two commands on a fresh machine:
#
#   make demo    # virtualenv + the project with its extras, the local control plane and Karpenter
#                # (built once, ~8 + ~4 min cold on idle cores), then the operator placing examples/
#                # on simulated Neuron nodes
#   make test    # the same setup, the layering/lint/type checks, then the full test suite in one
#                # pytest run on PYTEST_WORKERS local clusters at once (pytest-xdist)
#
# Everything lands in .venv (VENV=...) and ~/.cache/neuronplace; nothing is installed system-wide.
# `make lint` runs the static checks alone, `make check` them and the tests without a cluster (the
# inner loop); `make help` lists the targets.

PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
# Recipes (and the tests' subprocesses) find the venv's `neuronplace`, `kopf` and `lint-imports` first.
export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))

# The import packages and the folders they live in (pyproject.toml maps them the same way).
PACKAGES := cli operator placement runtime local
# import-linter and mypy read source trees, not the editable install's import hook: they get a tree
# of links shaped like the installed package (neuronplace/<package> -> <folder>). mypy runs inside
# it, because from the repository root the folder operator/ would hide the standard library's
# `operator` module from it.
LINT_TREE := build/lint

# The documentation site (mkdocs.yml, docs/) with warnings as errors, so a broken link or anchor
# fails `make lint` (about 2 s); the site lands in build/site.
DOCS_BUILD := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

PYTEST_ARGS ?=
DEMO_ARGS ?=
# The cluster tests wait far more than they compute: xdist workers, each with a local cluster of its
# own, run them side by side; whole files go to one worker (--dist loadfile), so a module's fixtures
# (the autoscaler's cluster, an operator) are made once and its tests share them. Tests whose
# behaviour depends on the binding mode run in both modes (pytest.mark.both_bindings), the rest once.
PYTEST_WORKERS ?= 3
CHECK_WORKERS ?= 2

.PHONY: help install controlplane demo lint docs check test clean

help:
	@echo "make demo     set up, build the local control plane if needed, run the demo"
	@echo "make test     set up, build the control plane if needed, lint, run the full test suite (both binding"
	@echo "              modes where they matter) on PYTEST_WORKERS=$(PYTEST_WORKERS) clusters; prints the 25 slowest tests"
	@echo "make check    lint, then the unit, property, runtime and reliability-oracle tests: no cluster (< 3 min)"
	@echo "make lint     import contracts (lint-imports), no clock read in placement, ruff check,"
	@echo "              ruff format --check, mypy, the docs site (make docs)"
	@echo "make docs     build the documentation site (mkdocs --strict: every link and anchor checked) into build/site"
	@echo "make clean    remove $(VENV) and build/ (the control plane cache stays in ~/.cache/neuronplace)"

install: $(VENV)/.installed

# Reinstalled whenever pyproject.toml changes (new dependencies, new packages).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[operator,runtime,test,docs]'
	touch $@

controlplane: install
	$(PY) -m neuronplace.cli local build

demo: controlplane
	$(BIN)/neuronplace demo $(DEMO_ARGS)

$(LINT_TREE)/neuronplace: Makefile
	rm -rf $(LINT_TREE)
	mkdir -p $@
	for package in $(PACKAGES); do ln -s ../../../$$package $@/$$package; done

lint: install $(LINT_TREE)/neuronplace
	PYTHONPATH=$(abspath $(LINT_TREE)) $(BIN)/lint-imports
	PYTHONPATH=$(abspath $(LINT_TREE)) $(PY) -m neuronplace.local.purity placement
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	cd $(LINT_TREE) && $(PY) -m mypy --config-file $(CURDIR)/pyproject.toml -p neuronplace.placement -p neuronplace.runtime
	$(DOCS_BUILD)

docs: install
	$(DOCS_BUILD)

check: lint
	$(PY) -m pytest -n $(CHECK_WORKERS) -m "not cluster" $(PYTEST_ARGS) tests/unit tests/runtime tests/reliability

test: controlplane lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build
