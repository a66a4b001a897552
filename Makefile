# Development tasks. The README's two commands are `make quickstart` and `make test`.
#
# Everything runs in a virtual environment at $(VENV), created with $(PYTHON) when missing.
# TORCH chooses the PyTorch build (docs/install.rst compares them):
#   cpu   PyTorch's CPU-only wheels, from $(TORCH_CPU_INDEX) (no CUDA libraries)
#   cuda  PyPI's torch, built with CUDA (with about 4.5 GB of NVIDIA libraries and triton; what CI
#         installs)
#   own   the torch already installed in $(VENV), whatever its build (ROCm, an older release, ...);
#         make installs the rest and leaves torch alone (and skips torchvision)
# Versions are pinned by constraints-$(TORCH).txt, which includes constraints.txt (own uses
# constraints.txt alone). An install is redone when setup.py, pyproject.toml or a constraints
# file changes. To change the build of an existing .venv, remove it first (rm -rf .venv).

PYTHON ?= python3
VENV ?= .venv
# Default: the build $(VENV) already has, else cuda where nvidia-smi is found, else cpu.
TORCH ?= $(or $(shell cat $(VENV)/.torch 2>/dev/null),$(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu))
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
SPHINX_OPTS ?= -W --keep-going -q

ifeq ($(filter $(TORCH),cpu cuda own),)
$(error TORCH must be cpu, cuda or own, got '$(TORCH)')
endif

BIN := $(VENV)/bin
comma := ,
CONSTRAINTS := $(if $(filter own,$(TORCH)),constraints.txt,constraints-$(TORCH).txt)
# pip's own output (no --quiet): a failed resolution shows which package conflicts.
PIP_INSTALL := $(BIN)/python -m pip install --disable-pip-version-check --progress-bar off \
	-c $(CONSTRAINTS)
# Extras: the quickstart plots; the tests, docs and notebooks need every extra.
CORE_EXTRAS := plot
DEV_EXTRAS := test,docs,ot,plot,diffusion,dask$(if $(filter own,$(TORCH)),,$(comma)vision)
TORCH_PKGS_core := torch
TORCH_PKGS_dev := torch torchvision
STAMP := $(VENV)/.installed-$(TORCH)
INSTALL_DEPS := setup.py pyproject.toml constraints.txt $(CONSTRAINTS)

.PHONY: venv install quickstart docs notebooks lint pytest test clean gpu-wheels gpu-check

# Python 3.11 or later (docs/install.rst says why); checked before pip downloads anything.
$(BIN)/python:
	@$(PYTHON) -c "import sys; sys.exit(sys.version_info < (3, 11))" || { echo "robustfit needs" \
	  "Python 3.11 or later, and $(PYTHON) is $$($(PYTHON) --version 2>&1): pass" \
	  "PYTHON=python3.11 (or later)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Step 1, the PyTorch build; $(1) names the packages (torch, or torch torchvision).
# cpu: PyTorch's CPU index is given as an extra index (its +cpu builds win over PyPI's of the same
# version; torch's dependencies come from PyPI at the pinned versions). Where the index cannot be
# reached (probed first, since pip would retry it for every package), make says so and installs
# PyPI's build. $(VENV)/.torch records the build.
ifeq ($(TORCH),cpu)
define install_torch
	@if $(BIN)/python -c "import urllib.request as r; r.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=20)" \
	    2>/dev/null; then set -x; $(PIP_INSTALL) --extra-index-url $(TORCH_CPU_INDEX) $(1); \
	else echo "WARNING: $(TORCH_CPU_INDEX) cannot be reached: installing PyPI's torch, which on" \
	  "Linux is the CUDA build (about 4.5 GB more)"; set -x; $(PIP_INSTALL) $(1); fi
	@$(BIN)/python -c "import torch; raise SystemExit(torch.version.cuda is not None)" || echo \
	  "WARNING: TORCH=cpu installed a CUDA build of torch"
endef
else ifeq ($(TORCH),cuda)
define install_torch
	$(PIP_INSTALL) $(1)
endef
else
define install_torch
	@$(BIN)/python -c "import torch" 2>/dev/null || { echo "TORCH=own: install a torch into" \
	  "$(VENV) first ($(BIN)/python -m pip install torch==...)"; exit 1; }
endef
endif

define check_build
	@if [ -f $(VENV)/.torch ] && [ "$$(cat $(VENV)/.torch)" != "$(TORCH)" ]; then \
	  echo "$(VENV) holds TORCH=$$(cat $(VENV)/.torch), not TORCH=$(TORCH): remove it" \
	    "(rm -rf $(VENV)) to change builds"; exit 1; fi
endef

# torchattacks, the independent implementation tests/test_reference.py cross-checks the
# evaluation attacks against, without its dependencies: its metadata pins requests~=2.25.1, which
# no resolver can satisfy beside Sphinx >= 7 (requests >= 2.30); what it imports (torch,
# torchvision, scipy, tqdm, numpy, requests) is installed already. Not with TORCH=own (it needs
# the torchvision that matches torch).
ifeq ($(TORCH),own)
install_reference :=
else
install_reference = $(PIP_INSTALL) --no-deps torchattacks
endif

# robustfit with what the quickstart needs (matplotlib), and with every extra and tool.
$(STAMP)-core: $(INSTALL_DEPS) | $(BIN)/python
	$(check_build)
	$(call install_torch,$(TORCH_PKGS_core))
	@echo $(TORCH) > $(VENV)/.torch
	$(PIP_INSTALL) -e ".[$(CORE_EXTRAS)]"
	touch $@

$(STAMP)-dev: $(INSTALL_DEPS) | $(BIN)/python
	$(check_build)
	$(call install_torch,$(TORCH_PKGS_dev))
	@echo $(TORCH) > $(VENV)/.torch
	$(PIP_INSTALL) -e ".[$(DEV_EXTRAS)]"
	$(install_reference)
	touch $@ $(STAMP)-core

venv: $(STAMP)-dev

install: venv

quickstart: $(STAMP)-core
	$(BIN)/python examples/quickstart.py

docs: $(STAMP)-dev
	$(BIN)/python -m sphinx $(SPHINX_OPTS) -b html docs docs/_build/html

# The executed copies of examples/*.ipynb that the docs render (docs/notebooks/), run as written
# (about 30 minutes on a 2-core CPU), as the committed copies were; NOTEBOOKS="--full 04" runs
# one, NOTEBOOKS= (empty) all in quick mode (ROBUSTFIT_QUICK=1, smoke-test figures). Commit them.
NOTEBOOKS ?= --full
notebooks: $(STAMP)-dev
	OMP_NUM_THREADS=1 $(BIN)/python docs/execute_notebooks.py $(NOTEBOOKS)

lint: $(STAMP)-dev
	$(BIN)/ruff check .

pytest: $(STAMP)-dev
	$(BIN)/python -m pytest -q tests

# Docs with warnings as errors, lint, then the test suite.
test: $(STAMP)-dev
	$(MAKE) docs
	$(MAKE) lint
	$(MAKE) pytest

clean:
	rm -rf docs/_build docs/generated quickstart_robustness.png

# ---------------------------------------------------------------- one GPU: make gpu-check
# A GPU machine without network access (one H100/H200, Python 3.12, torch and torchvision in its
# image but not skorch, POT, diffusers or dask) gets what it lacks as wheels carried in
# .whl/ (ignored by git). Here, with network access:   make gpu-wheels
# There, in the repository root:                      make gpu-check
# gpu-wheels downloads the py3.12 manylinux wheels at the versions of constraints.txt, closing
# over their requirements, and checks the set (sizes, tags, completeness against the image's
# package list, an install with --no-index into a fresh folder, imports: see
# benchmarks/check_gpu_wheels.py). It needs $(VENV) with robustfit's dependencies.
gpu-wheels: | $(BIN)/python
	rm -rf .whl
	$(BIN)/python benchmarks/check_gpu_wheels.py --download .whl

# gpu-check (there, with .whl/ carried along) installs the wheels and runs the tests marked gpu,
# benchmarks/bench_amp.py, benchmarks/bench_gpu.py and benchmarks/bench_ddp_gpu.py (torchrun on
# every GPU) within about 6 minutes, writing every output
# to $$OUT when set, else benchmarks/results: see benchmarks/gpu_check.sh, which it runs (and
# which runs the same where make is missing). It does not need $(VENV): it uses the machine's
# python3 (GPU_PYTHON=...).
gpu-check:
	bash benchmarks/gpu_check.sh
