# vllm-hpc: build, demo and test entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BED_CACHE ?= /var/cache/vllm-hpc-bed
DEMO_MODEL ?= $(BED_CACHE)/tiny-model
PYTEST_ARGS ?=

.PHONY: help venv system apptainer demo test test-unit test-integration bench bench-quick lock

help:
	@echo "make demo         set up a Python environment and serve a tiny generated model locally, then chat with it"
	@echo "make test         install the test bed (Slurm, Apptainer, CPU vLLM) and run every test layer"
	@echo "make test-unit    only the fast pure tests"
	@echo "make image        build the production image (IMAGE=vllm-hpc.sif)"
	@echo "make lock         resolve container/requirements.lock and the test bed's lock again (uv)"
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

# Both locks, resolved by uv as of vLLM 0.11.0's release day (container/lock.sh).
lock:
	bash container/lock.sh

bench: system venv
	$(VENV)/bin/python tests/bench/bench.py

bench-quick: system venv
	$(VENV)/bin/python tests/bench/bench.py --quick

# ---- images (container/vllm-hpc.def) ----
#
# make image: the production image. The definition's %arguments hold the defaults
# (vLLM 0.11.0 and Ray on nvidia/cuda:12.8.1-devel-ubuntu22.04); only the build
# arguments given to make are passed on:
#   make image IMAGE=/shared/vllm-hpc.sif VLLM_SPEC=vllm==0.11.0 BASE=...
# Build arguments: BOOTSTRAP BASE VLLM_SPEC EXTRA_SPEC PIP_ARGS (see the definition).
# By default every Python package comes from container/requirements.lock (hashes
# required); a VLLM_SPEC given here replaces the lock, and the pins are then yours.
# CA_BUNDLE=FILE trusts that CA bundle during the build only (TLS re-signing proxies).
# BUILD_FLAGS adds apptainer build options: --fakeroot, --bind WHEELS:/mnt:ro, ...
# PREFLIGHT=0 skips the reachability checks of the registry and the package index.
#
# make test-image: the same definition built on a debootstrap Debian 12 base with the
# test bed's CPU vLLM, installed offline and exactly as locked; rebuilt only when
# the definition, the lock, the project's sources or the base changed.
IMAGE ?= vllm-hpc.sif
IMAGE_ARGS := BOOTSTRAP BASE VLLM_SPEC EXTRA_SPEC PIP_ARGS
CA_BUNDLE ?=
BUILD_FLAGS ?=
PREFLIGHT ?= 1
DEF := container/vllm-hpc.def
VLLM_HPC_TEST_IMAGE ?= $(BED_CACHE)/vllm-hpc-test.sif
VLLM_HPC_BED_WHEELS ?= $(BED_CACHE)/wheels
TEST_BASE := $(BED_CACHE)/base/debian-bookworm.sif
TEST_IMAGE_INPUTS := $(DEF) tests/bed/requirements-cpu.lock pyproject.toml README.md \
	container/requirements.lock $(wildcard tests/bed/cpu-platform/*) \
	$(shell find entrypoint -type f -not -path '*/__pycache__/*' -not -path '*.egg-info/*' 2>/dev/null)
# zstd level 1: mksquashfs of the 7 GB test root file system takes about 70 s on two
# cores, against about 25 minutes with the default gzip.
TEST_SQUASHFS := -comp zstd -Xcompression-level 1

given = $(filter command line environment override,$(origin $(1)))
# A build argument's default, read from the definition's %arguments.
def_default = $(shell sed -n '/^%arguments/,/^%[a-z]/ s/^ *$(1)=//p' $(DEF))
stamp_lines = while IFS= read -r line; do printf '[%s %(%H:%M:%S)T] %s\n' "$(1)" -1 "$$line"; done

.PHONY: image test-image

image:
	@set -euo pipefail; \
	command -v apptainer >/dev/null || { echo "make image: needs Apptainer 1.2 or newer on PATH" >&2; exit 1; }; \
	bootstrap='$(or $(if $(call given,BOOTSTRAP),$(BOOTSTRAP)),$(call def_default,BOOTSTRAP))'; \
	base='$(or $(if $(call given,BASE),$(BASE)),$(call def_default,BASE))'; \
	pip_args='$(if $(call given,PIP_ARGS),$(PIP_ARGS))'; \
	if [ "$(PREFLIGHT)" = 1 ]; then \
	  if [ "$$bootstrap" = docker ]; then \
	    first=$${base%%/*}; registry=registry-1.docker.io; \
	    case "$$base" in */*) case "$$first" in *.*|*:*|localhost) registry=$$first;; esac;; esac; \
	    if ! curl -sS -o /dev/null --max-time 20 $(if $(CA_BUNDLE),--cacert $(CA_BUNDLE)) "https://$$registry/v2/"; then \
	      echo "make image: cannot reach the container registry $$registry for the base docker://$$base." >&2; \
	      echo "  Build where it is reachable, or pull the base elsewhere (apptainer pull base.sif docker://$$base)," >&2; \
	      echo "  copy it here and run: make image BOOTSTRAP=localimage BASE=/path/to/base.sif" >&2; exit 1; fi; \
	  elif [ "$$bootstrap" = localimage ] && [ ! -e "$$base" ]; then \
	    echo "make image: BASE=$$base does not exist (BOOTSTRAP=localimage wants a SIF file or a sandbox directory)" >&2; exit 1; \
	  fi; \
	  case " $$pip_args " in *" --no-index "*) ;; *) \
	    index=$$(printf '%s\n' $$pip_args | sed -n '/^\(--index-url\|-i\)$$/{n;p;q}'); index=$${index:-https://pypi.org/simple/}; \
	    if ! curl -sS -o /dev/null --max-time 20 $(if $(CA_BUNDLE),--cacert $(CA_BUNDLE)) "$$index"; then \
	      echo "make image: cannot reach the Python package index $$index, which %post installs vLLM and Ray from." >&2; \
	      echo "  Give network access, a mirror (PIP_ARGS='--index-url URL'), or a wheelhouse:" >&2; \
	      echo "  make image BUILD_FLAGS='--bind /path/to/wheels:/mnt:ro' PIP_ARGS='--no-index --find-links /mnt'" >&2; exit 1; fi;; \
	  esac; \
	fi; \
	args=$$(mktemp); partial='$(IMAGE:.sif=).building.sif'; trap 'rm -f "$$args" "$$partial"' EXIT; \
	$(foreach v,$(IMAGE_ARGS),$(if $(call given,$(v)),printf '%s\n' '$(v)=$($(v))' >>"$$args";)) \
	echo "make image: building $(IMAGE) from $(DEF) (base $$bootstrap:$$base)"; \
	$(if $(call given,VLLM_SPEC),echo "make image: NOTE: VLLM_SPEC replaces container/requirements.lock; this image's pins are yours to keep working";) \
	start=$$(date +%s); \
	apptainer build --force --build-arg-file "$$args" \
	  $(if $(CA_BUNDLE),--bind $(abspath $(CA_BUNDLE)):/etc/ssl/certs/ca-certificates.crt:ro) \
	  $(BUILD_FLAGS) "$$partial" $(DEF); \
	mv -f "$$partial" '$(IMAGE)'; \
	echo "make image: $(abspath $(IMAGE)), $$(du -h '$(IMAGE)' | cut -f1), built in $$(( $$(date +%s) - start ))s"

test-image: $(VLLM_HPC_TEST_IMAGE)

$(TEST_BASE): tests/bed/make-base.sh | apptainer
	VLLM_HPC_BED_CACHE=$(BED_CACHE) bash tests/bed/make-base.sh

# The wheelhouse (filled by `make venv`) is bound on /mnt and the lock's directory on
# /srv for %post only; neither is copied into the image.
$(VLLM_HPC_TEST_IMAGE): $(TEST_IMAGE_INPUTS) $(TEST_BASE) | apptainer venv
	@set -euo pipefail; \
	out='$@'; partial="$${out%.sif}.building.sif"; log="$${out%.sif}.build.log"; \
	args=$$(mktemp); trap 'rm -f "$$args" "$$partial"' EXIT; \
	printf '%s\n' BOOTSTRAP=localimage 'BASE=$(TEST_BASE)' 'VLLM_SPEC=--require-hashes -r /srv/requirements-cpu.lock' \
	  EXTRA_SPEC=vllm-hpc-bed-cpu-platform \
	  'PIP_ARGS=--no-index --no-deps --find-links /mnt' >"$$args"; \
	echo "test-image: building $$out (full log: $$log)"; \
	start=$$(date +%s); \
	if ! apptainer build --force --build-arg-file "$$args" \
	    --bind '$(VLLM_HPC_BED_WHEELS):/mnt:ro' --bind '$(CURDIR)/tests/bed:/srv:ro' \
	    --mksquashfs-args '$(TEST_SQUASHFS)' "$$partial" $(DEF) 2>&1 \
	    | $(call stamp_lines,test-image) | tee "$$log" \
	    | grep --line-buffered -E '\] (INFO|FATAL|ERROR|NOTE|\+ |Successfully installed vllm-hpc|vllm-hpc vllmcheck|ok   |FAIL )'; then \
	  tail -n 40 "$$log" >&2; echo "test-image: build failed (full log: $$log)" >&2; exit 1; fi; \
	mv -f "$$partial" "$$out"; \
	echo "test-image: $$out, $$(du -h "$$out" | cut -f1), built in $$(( $$(date +%s) - start ))s"
