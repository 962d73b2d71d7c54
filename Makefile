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

.PHONY: demo test test-all lint install clean gpu-wheels gpu-check

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

# GPU check (README "GPU check"). gpu-wheels: where pip reaches the index, the wheels the lent GPU
# machine lacks (benchmarks/gpu_wheels.txt, CPython 3.12 x86-64) into .whl/ (git-ignored).
# gpu-check: on the GPU machine; installs .whl/ into a site folder on PYTHONPATH, checks every
# package first, then runs the stages (<= 8 min); GPU_CHECK_ARGS=--smoke is the CPU path.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_ARGS ?=

gpu-wheels:
	$(PYTHON) benchmarks/gpu_wheels.py --dest .whl

gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

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
