# Two commands for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs with constraints.txt (pins the
# CPU build of torch so no CUDA wheels are pulled). A second run is fast: the
# install is redone only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench tinystories clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,eval]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/latentlm quickstart

# The slowest tests are listed with every run: the suite has a 15-minute budget with the install.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q --durations=25

# The edit loop: every test but the slow tier (under 3 minutes on 2 cores).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

# The TinyStories run queue (days on 2 AVX2 CPU cores; rerun to resume): every model and row, compared
# on valid and test (benchmarks/tinystories_queue.sh).
tinystories: $(STAMP)
	PYTHON=$(BIN)/python bash benchmarks/tinystories_queue.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training_loop.py

clean:
	rm -rf $(VENV) build dist *.egg-info
