# One-command entry points for a fresh machine:
#   make test   -- virtualenv, CPU torch if none, build the extension, run the test suite
#   make demo   -- same setup, then run the demo on the embedded defaults
#   make bench  -- CPU benchmarks into bench/results/
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: setup build test demo bench selection-synthetic clean

$(VENV)/.ready: pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "sketchprune needs Python >= 3.10")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# a CPU build of torch, pinned (never an unpinned torch): the +cpu wheel where pip already sees
	@# one, else from PyTorch's CPU index; PyPI's default wheel (CUDA, several GB) only as a last resort
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null \
		|| $(PY) -m pip install -q --index-url https://download.pytorch.org/whl/cpu "torch==$(TORCH_VERSION)" \
		|| $(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	@# build tools for the --no-build-isolation build below; CMake from PyPI when the system has none
	@# or one older than 3.24
	$(PY) -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" ninja
	@$(PY) -c 'import re, shutil, subprocess, sys; c = shutil.which("cmake"); \
		v = c and re.search(r"(\d+)\.(\d+)", subprocess.run([c, "--version"], capture_output=True, text=True).stdout); \
		sys.exit(0 if v and (int(v[1]), int(v[2])) >= (3, 24) else 1)' || $(PY) -m pip install -q "cmake>=3.24"
	@# the [test] extra of pyproject.toml
	$(PY) -m pip install -q numpy "pytest>=8" "pytest-benchmark>=4" "triton>=3.2" "transformers>=5.0" gguf accelerate "tqdm>=4.60"
	touch $@

setup: $(VENV)/.ready

build: setup
	$(PY) -m pip install -q --no-build-isolation --no-deps .

test: build
	$(PY) -m pytest -q -ra $(PYTEST_ARGS) tests

DEMO_OUT ?= demo_out
SP := $(PY) -m sketchprune.cli

demo: build
	$(PY) -m sketchprune.demo
	@echo "== pruning SmolLM2-135M-Instruct by 20% (sigma + least-squares reconstruction, 16k Wikipedia tokens) =="
	mkdir -p $(DEMO_OUT)
	$(SP) prune --model smollm2-135m --sparsity 0.2 --criterion sigma --reconstruct --calib wiki \
		--out $(DEMO_OUT)/smollm2-135m-pruned --overwrite --report $(DEMO_OUT)/prune_report.json
	@echo "== held-out Wikipedia perplexity: dense, then pruned =="
	$(SP) eval --model smollm2-135m --text wiki --tokens 8192 --report $(DEMO_OUT)/eval_dense.json
	$(SP) eval --model $(DEMO_OUT)/smollm2-135m-pruned --text wiki --tokens 8192 --report $(DEMO_OUT)/eval_pruned.json
	@echo "== data selection on Fashion-MNIST: SkMM against uniform, linear probe =="
	$(PY) -m sketchprune.demo_select

bench: build
	$(PY) -m pip install -q matplotlib
	$(PY) bench/run_cpu_bench.py bench/results

selection-synthetic: build
	$(PY) -m pip install -q matplotlib
	$(PY) bench/selection_synthetic.py results/selection

clean:
	rm -rf build $(VENV)
