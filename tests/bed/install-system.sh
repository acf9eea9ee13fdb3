#!/usr/bin/env bash
# Installs every Debian package the test bed needs: Slurm and munge for the emulated
# cluster, namespace and process tools, and Apptainer's build and image dependencies.
# Idempotent: packages already installed are not fetched again, and the package index
# is refreshed only when something is missing.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

packages=(
    # the emulated cluster
    slurm-wlm slurmctld slurmd slurm-client munge
    iproute2 util-linux procps psmisc
    python3  # /usr/bin/python3 runs tests/bed/slurmstepd-subreaper
    # Apptainer: building it from source and building images
    build-essential pkg-config git curl ca-certificates
    libseccomp-dev libtalloc-dev libattr1-dev libprotobuf-c-dev
    uidmap fakeroot cryptsetup tzdata squashfs-tools debootstrap
)
# optional: absent from some releases
optional_packages=(libsubid-dev)

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
start_ms=$(now_ms)
phase() {
    local ms=$(( $(now_ms) - start_ms ))
    printf '[install-system] %s (%d.%03d s)\n' "$1" $((ms / 1000)) $((ms % 1000))
}

if [[ $(id -u) -ne 0 ]]; then
    echo "install-system.sh: must run as root" >&2
    exit 1
fi

is_installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

missing=()
for p in "${packages[@]}" "${optional_packages[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    phase "all ${#packages[@]} packages already installed"
    exit 0
fi

echo "[install-system] missing: ${missing[*]}"
apt-get update -qq -o DPkg::Lock::Timeout=600
phase "apt-get update"

wanted=()
for p in "${missing[@]}"; do
    if [[ " ${optional_packages[*]} " == *" $p "* ]] && ! apt-cache show "$p" >/dev/null 2>&1; then
        echo "[install-system] optional package $p not available, skipped"
        continue
    fi
    wanted+=("$p")
done

if [[ ${#wanted[@]} -gt 0 ]]; then
    # --no-install-recommends keeps the set small; Debian's maintainer scripts try to
    # start munge/slurm services, which fail harmlessly without an init system.
    # Lock::Timeout waits for another apt run on the same machine instead of failing.
    apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=600 "${wanted[@]}" >/dev/null
fi
phase "installed ${#wanted[@]} packages"

for p in "${packages[@]}"; do
    if ! is_installed "$p"; then
        echo "install-system.sh: $p is still not installed" >&2
        exit 1
    fi
done
phase "done"
