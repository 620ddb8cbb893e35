# Two commands on a fresh machine:
#
#   make demo    # virtualenv + the project with its extras, the local control plane and Karpenter
#                # (built once, ~8 + ~4 min cold on idle cores), then the operator placing examples/
#                # on simulated Neuron nodes
#   make test    # the same setup, the layering/lint/type checks, then the full test suite (binding
#                # mode Scheduler), then the operator suites again in binding mode Direct
#
# Everything lands in .venv (VENV=...) and ~/.cache/neuronplace; nothing is installed system-wide.
# `make lint` runs the static checks alone; `make help` lists the targets.

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

PYTEST_ARGS ?=
DEMO_ARGS ?=
# The operator runs in either binding mode (Scheduler: kube-scheduler binds the pinned pods; Direct:
# the operator sets nodeName). The full suite runs in the default mode, then the operator's own
# cluster suites run again in the other one (pytest --binding; see neuronplace.local.pytest_plugin).
OPERATOR_SUITES := $(wildcard tests/cluster/test_operator_*.py) tests/reliability

.PHONY: help install controlplane demo lint test clean

help:
	@echo "make demo     set up, build the local control plane if needed, run the demo"
	@echo "make test     set up, build the control plane if needed, lint, run the full test suite, then the"
	@echo "              operator suites again in the other binding mode (--binding Direct)"
	@echo "make lint     import contracts (lint-imports), no clock read in placement, ruff check,"
	@echo "              ruff format --check, mypy"
	@echo "make clean    remove $(VENV) and build/ (the control plane cache stays in ~/.cache/neuronplace)"

install: $(VENV)/.installed

# Reinstalled whenever pyproject.toml changes (new dependencies, new packages).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[operator,runtime,test]'
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

test: controlplane lint
	$(PY) -m pytest --binding Scheduler $(PYTEST_ARGS)
	$(PY) -m pytest --binding Direct $(PYTEST_ARGS) $(OPERATOR_SUITES)

clean:
	rm -rf $(VENV) build
