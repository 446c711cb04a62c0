# Two commands do all the setup on a fresh machine:
#   make demo   installs into .venv and sweeps MiniLM over EBS 16/32/64 on the offline demo data (~3 min on 2 CPU cores)
#   make test   installs into .venv, checks the layers (lint-imports) and lint (ruff), runs the test suite offline
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a CUDA machine: make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA index>"
TORCH_SPEC ?= torch==2.13.0

# The demo and the tests never reach the Hugging Face Hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_VERBOSITY ?= error

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: a bare "torch" requirement would otherwise pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[test,postgres,plot,tensorboard]"
	touch $@

demo: install
	$(BIN)/accumbench sweep --preset demo

# The layers first (import-linter: no upward import, no circle; see docs/architecture.md), then lint, then the suite.
test: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) checkpoints runs.db runs.db-wal runs.db-shm .runs.db-reserve runs.db-reserve
