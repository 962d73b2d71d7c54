# Set-up lives here: `make demo` and `make test` work from a fresh clone.
# Every install takes the tested versions of requirements-lock.txt (pip constraints), torch
# included: on a machine without an NVIDIA GPU its ==2.13.0 pin takes the local CPU build, so pip
# never pulls several GB of CUDA wheels. `make lock` moves the versions, after testing them.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
LOCK := requirements-lock.txt
CONSTRAINTS := -c $(LOCK)
PYTEST_ARGS ?=

.PHONY: demo test test-all lint install clean gpu-wheels gpu-check lock test-lowest docs

# One torch thread: on a busy 2-core machine two intra-op threads made a step ~25x slower.
DEMO_THREADS ?= 1

demo: $(VENV)/.installed
	$(PY) -m lightning_aug_dpo.demo demo_assets
	OMP_NUM_THREADS=$(DEMO_THREADS) $(VENV)/bin/lightning-aug-dpo fit --config configs/demo.yaml

test: $(VENV)/.installed-test
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(VENV)/.installed-test
	$(PY) -m pytest $(PYTEST_ARGS)

# The documentation site (mkdocs.yml, docs/): served at http://127.0.0.1:8000 while you edit.
# tests/test_docs.py builds it with --strict in `make test`.
docs: $(VENV)/.installed
	$(PIP) install -q $(CONSTRAINTS) -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check lightning_aug_dpo tests benchmarks

install: $(VENV)/.installed

# GPU check (docs/gpu-check.md). gpu-wheels: where pip reaches the index, the wheels a bare GPU
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

$(VENV)/.installed: setup.cfg pyproject.toml $(LOCK) | $(PY)
	$(PIP) install -q $(CONSTRAINTS) pip setuptools wheel
	$(PIP) install -q $(CONSTRAINTS) torch
	$(PIP) install -q $(CONSTRAINTS) -e .
	touch $@

# The test install ends with the venv compared to the lock: any drift stops here, named.
$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q $(CONSTRAINTS) -e ".[test]"
	$(PY) tools/lock.py check --venv $(VENV) $(if $(HAS_GPU),--allow-extra)
	touch $@

# Upgrading is a tested step: the newest versions setup.cfg allows, in a scratch venv; the lock is
# rewritten only if `pytest -m "not slow"` passes there. test-lowest: the same at setup.cfg's floors.
lock:
	$(PYTHON) tools/lock.py upgrade

test-lowest:
	$(PYTHON) tools/lock.py lowest

clean:
	rm -rf $(VENV) demo_assets runs lightning_logs
