# kpf-masters: `make demo` and `make test` set everything up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kpfmasters-installed
CORES ?= 2

.PHONY: venv demo test lint format bench bench-night clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kpfmasters demo --dir demo --cores $(CORES)

test: $(STAMP)
	$(BIN)/pytest -n $(CORES) --dist loadgroup tests

lint: $(STAMP)
	$(BIN)/ruff check kpfmasters scripts tests bench
	$(BIN)/ruff format --check kpfmasters scripts tests bench
	$(BIN)/snakefmt --check Snakefile rules
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/snakemake --lint --config date=20230606 l0_root=/tmp/kpfm-lint/L0 work_root=/tmp/kpfm-lint/work masters_root=/tmp/kpfm-lint/masters order_mask=/tmp/kpfm-lint/mask.fits

format: $(STAMP)
	$(BIN)/ruff format kpfmasters scripts tests bench
	$(BIN)/ruff check --fix kpfmasters scripts tests bench
	$(BIN)/snakefmt Snakefile rules

bench: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python bench/bench_stack.py
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python bench/bench_l0.py

bench-night: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH bash bench/night.sh

clean:
	rm -rf demo .snakemake .pytest_cache
