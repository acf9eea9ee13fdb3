# vllm-hpc: build, demo and test entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BED_CACHE ?= /var/cache/vllm-hpc-bed
DEMO_MODEL ?= $(BED_CACHE)/tiny-model
PYTEST_ARGS ?=

.PHONY: help venv system apptainer demo test test-unit test-integration bench bench-quick

help:
	@echo "make demo         set up a Python environment and serve a tiny generated model locally, then chat with it"
	@echo "make test         install the test bed (Slurm, Apptainer, CPU vLLM) and run every test layer"
	@echo "make test-unit    only the fast pure tests"
	@echo "make image        build the production image (IMAGE=vllm-hpc.sif)"
	@echo "make bench        start-up, cluster formation and failure detection figures (bench-quick: one run each)"

venv:
	bash tests/bed/make-venv.sh

system:
	bash tests/bed/install-system.sh

apptainer: system
	bash tests/bed/build-apptainer.sh

demo: venv
	bash tests/bed/demo.sh "$(DEMO_MODEL)"

test-unit: venv
	$(VENV)/bin/python -m pytest -m unit $(PYTEST_ARGS)

test-integration: system venv apptainer test-image
	$(VENV)/bin/python -m pytest -m "not unit" $(PYTEST_ARGS)

test: system venv apptainer test-image
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: system venv
	$(VENV)/bin/python tests/bench/bench.py

bench-quick: system venv
	$(VENV)/bin/python tests/bench/bench.py --quick

# ---- images (container/vllm-hpc.def) ----
