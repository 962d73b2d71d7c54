# Set-up lives here: `make demo` and `make test` work from a fresh clone.
# On a machine without an NVIDIA GPU, torch is pinned to the CPU build (constraints-cpu.txt) so
# that pip never pulls several GB of CUDA wheels.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
CONSTRAINTS := $(if $(HAS_GPU),,-c constraints-cpu.txt)
PYTEST_ARGS ?=

.PHONY: demo test test-all lint install clean

# One torch thread: on a busy 2-core machine two intra-op threads made a step ~25x slower.
DEMO_THREADS ?= 1

demo: $(VENV)/.installed
	$(PY) -m lightning_aug_dpo.demo demo_assets
	OMP_NUM_THREADS=$(DEMO_THREADS) $(VENV)/bin/lightning-aug-dpo fit --config configs/demo.yaml

test: $(VENV)/.installed-test
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check lightning_aug_dpo tests benchmarks

install: $(VENV)/.installed

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml constraints-cpu.txt | $(PY)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q $(CONSTRAINTS) torch
	$(PIP) install -q $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q $(CONSTRAINTS) -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) demo_assets runs lightning_logs
