#!/usr/bin/env bash
# Make the test image's base: a minimal Debian 12 root file system made with
# debootstrap, packed as a SIF for `Bootstrap: localimage`.
#
#   tests/bed/make-base.sh          # prints the SIF's path on its last line
#
# It stands in for the production base (an Ubuntu CUDA "devel" image): a Debian
# userland with Python 3.11 (the Python the test wheelhouse is built for), its
# venv and headers, a C/C++ compiler (torch's inductor compiles at run time, as
# the CUDA devel base allows), CA certificates, and libnuma (which the CPU build
# of vLLM links, unlike the CUDA one). The image definition's %post
# installs the rest from the distribution, as it does on the production base.
#
# Idempotent: nothing is done when the SIF exists and was made from the same
# recipe (a stamp records suite, mirror and package list).
set -euo pipefail

SUITE="${BASE_SUITE:-bookworm}"   # Debian 12
CACHE="${VLLM_HPC_BED_CACHE:-/var/cache/vllm-hpc-bed}/base"
SIF="$CACHE/debian-$SUITE.sif"
ROOTFS="$CACHE/rootfs.tmp"
PACKAGES="python3,python3-venv,python3-dev,g++,ca-certificates,libnuma1"

log() { printf '[make-base %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The Debian mirror this machine's apt already uses for $SUITE, read from apt
# itself so that both one-line and deb822 source files count.
debian_mirror() {
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 2>/dev/null |
    awk -v s="$SUITE" '$2 == s && $3 == "main" { print $1; exit }'
}

main() {
  [[ $(id -u) == 0 ]] || die "debootstrap and apptainer build need root"
  command -v debootstrap >/dev/null || die "debootstrap missing (tests/bed/build-apptainer.sh installs it)"
  command -v apptainer >/dev/null || die "apptainer missing (run tests/bed/build-apptainer.sh)"

  local mirror
  mirror=$(debian_mirror)
  [[ -n $mirror ]] || die "no '$SUITE main' source in this machine's apt configuration (apt-get indextargets)"
  local stamp="suite=$SUITE mirror=$mirror packages=$PACKAGES"

  if [[ -f $SIF && -f $SIF.stamp && $(<"$SIF.stamp") == "$stamp" ]]; then
    log "base image up to date: $SIF"
    echo "$SIF"
    return
  fi

  mkdir -p "$CACHE"
  rm -rf "$ROOTFS" "$SIF.stamp"
  trap 'rm -rf "$ROOTFS"' EXIT
  local rootfs=$ROOTFS

  local t0=$SECONDS
  log "debootstrap $SUITE from $mirror (with $PACKAGES)"
  timeout 1800 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" \
    >"$CACHE/debootstrap.log" 2>&1 ||
    { tail -n 30 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  # Package caches are of no use in an image; the lists are refetched by %post.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  log "debootstrap done in $((SECONDS - t0)) s ($(du -sh "$rootfs" | cut -f1))"

  t0=$SECONDS
  # zstd level 1: about 15 s here instead of about 90 s with the default gzip.
  timeout 900 apptainer --silent build --force --mksquashfs-args '-comp zstd -Xcompression-level 1' \
    "$SIF.tmp" "$rootfs" >&2 || die "apptainer build of the base failed"
  mv "$SIF.tmp" "$SIF"
  log "packed $SIF in $((SECONDS - t0)) s ($(du -h "$SIF" | cut -f1))"

  # Proves Apptainer mounts SIF images here (loop + squashfs, no FUSE helpers).
  local py
  py=$(timeout 120 apptainer exec "$SIF" python3 -c 'import sys, venv; print(sys.version.split()[0])') ||
    die "cannot run python3 inside $SIF"
  log "python3 in the base: $py"
  printf '%s' "$stamp" >"$SIF.stamp"
  echo "$SIF"
}

main "$@"
