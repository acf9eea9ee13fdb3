#!/usr/bin/env bash
# Build and install Apptainer from its Go module source, with this machine's Go
# toolchain and module proxy (no release tarball, no git clone needed).
#
#   tests/bed/build-apptainer.sh            # release v1.5.3 (or APPTAINER_VERSION)
#
# Idempotent: does nothing when `$PREFIX/bin/apptainer --version` already reports
# the version and its starter carries the bounding-set change described below.
# The compiled tree is kept under $VLLM_HPC_BED_CACHE/apptainer/<version>, so a
# machine that lost $PREFIX but kept the cache only reruns `make install`.
#
# Configuration chosen for the test bed (runs as root):
#   --without-suid     (upstream default) root needs no setuid starter;
#   --without-network  CNI plugins are only for `--net`, which nothing here uses,
#                      and they are a large part of the compile time;
#   seccomp and libsubid stay on (their -dev packages are installed below).
# FUSE helpers (squashfuse, fuse-overlayfs, fuse2fs) are not built: their
# download script needs the internet. As root, Apptainer mounts SIF images with
# the kernel's loop + squashfs + overlay support instead.
# One change to the source: see patch_starter below (machines whose own
# capability bounding set is reduced, such as containers).
set -euo pipefail

APPTAINER_VERSION="${APPTAINER_VERSION:-v1.5.3}"
PREFIX="${APPTAINER_PREFIX:-/usr/local}"
CACHE="${VLLM_HPC_BED_CACHE:-/var/cache/vllm-hpc-bed}/apptainer"
MODULE=github.com/apptainer/apptainer

# Debian packages the build and `apptainer build` need (upstream INSTALL.md list,
# plus squashfs-tools for mksquashfs and debootstrap for the test base image).
DEB_PACKAGES=(build-essential pkg-config libseccomp-dev libtalloc-dev libattr1-dev
  libprotobuf-c-dev libsubid-dev uidmap fakeroot cryptsetup-bin tzdata
  squashfs-tools debootstrap)

log() { printf '[build-apptainer %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*"; exit 1; }

phase_start=0
phase() { phase_start=$SECONDS; log "== $*"; }
phase_done() { log "   done in $((SECONDS - phase_start)) s"; }

installed_version() {
  # `apptainer --version` prints "apptainer version 1.5.3"
  if [[ -x $PREFIX/bin/apptainer ]]; then
    "$PREFIX/bin/apptainer" --version 2>/dev/null | awk '{print $NF}'
  fi
}

install_deb_packages() {
  local missing=() p
  for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    log "Debian build dependencies already installed"
    return
  fi
  phase "apt-get install ${missing[*]}"
  [[ $(id -u) == 0 ]] || die "missing Debian packages (${missing[*]}); run as root"
  # Lock::Timeout waits for another apt run on this machine instead of failing.
  DEBIAN_FRONTEND=noninteractive timeout 900 apt-get update -qq -o DPkg::Lock::Timeout=600
  DEBIAN_FRONTEND=noninteractive timeout 1800 apt-get install -y -qq --no-install-recommends \
    -o DPkg::Lock::Timeout=600 "${missing[@]}"
  phase_done
}

# Prints the directory of the downloaded module source for version $1, or fails.
download_module() {
  (cd / && timeout 600 go mod download -json "$MODULE@$1" 2>/dev/null) |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["Dir"]) if "Dir" in d else sys.exit(d.get("Error","no Dir"))'
}

# The newest 1.4.x/1.5.x the proxy lists, if it serves a list at all.
newest_listed_version() {
  (cd / && timeout 120 go list -m -versions "$MODULE" 2>/dev/null) | tr ' ' '\n' |
    grep -E '^v1\.(4|5)\.[0-9]+$' | sort -V | tail -n1
}

# Apptainer's starter asks for every capability when root runs a container
# (`root default capabilities = full`, and always for `apptainer build`'s %post,
# which runs with a built-in configuration), and stops with "Requesting capability
# set ... while permitted capability set is ..." when this machine itself runs
# with a reduced bounding set, as it does inside a container. A capability outside
# the bounding set can never be obtained, so the patched starter stops asking for
# it, the same way it already drops capabilities newer than the kernel's.
STARTER_ANCHOR='    debugf("Effective capabilities:   0x%016llx\n", privileges->capabilities.effective);'
STARTER_MARK='not in the bounding set, not requested'
STARTER_PATCH='    /* a capability outside the current bounding set can never be obtained */
    for ( caps_index = 0; caps_index <= last_cap; caps_index++ ) {
        if ( prctl(PR_CAPBSET_READ, caps_index) == 0 ) {
            debugf("Capability %d not in the bounding set, not requested\n", caps_index);
            privileges->capabilities.effective &= ~capflag(caps_index);
            privileges->capabilities.permitted &= ~capflag(caps_index);
            privileges->capabilities.bounding &= ~capflag(caps_index);
            privileges->capabilities.inheritable &= ~capflag(caps_index);
            privileges->capabilities.ambient &= ~capflag(caps_index);
        }
    }
'

patch_starter() {
  local file=$1/cmd/starter/c/starter.c
  grep -qF "$STARTER_MARK" "$file" && return
  grep -qF "$STARTER_ANCHOR" "$file" || die "cannot patch $file: anchor line not found"
  ANCHOR=$STARTER_ANCHOR PATCH=$STARTER_PATCH python3 - "$file" <<'PY'
import os, sys
path = sys.argv[1]
text = open(path).read()
anchor = os.environ["ANCHOR"]
open(path, "w").write(text.replace(anchor, os.environ["PATCH"] + anchor, 1))
PY
}

installed_starter_patched() {
  local starter
  starter="$("$PREFIX/bin/apptainer" buildcfg LIBEXECDIR)/apptainer/bin/starter"
  [[ -f $starter ]] && grep -qaF "$STARTER_MARK" "$starter"
}

main() {
  command -v go >/dev/null || die "Go is not installed (need Go >= the version in Apptainer's go.mod)"
  export GOTOOLCHAIN=local   # never fetch another Go toolchain behind our back

  local want=${APPTAINER_VERSION#v}
  local have
  have=$(installed_version)
  if [[ $have == "$want" ]] && installed_starter_patched; then
    log "apptainer $have already installed in $PREFIX; nothing to do"
    exit 0
  fi
  log "installed: ${have:-none}; wanted: $want"

  install_deb_packages

  phase "fetch $MODULE@v$want from $(go env GOPROXY)"
  local src
  if ! src=$(download_module "v$want"); then
    log "v$want not served; looking for the newest 1.4/1.5 release the proxy lists"
    local alt
    alt=$(newest_listed_version) || true
    [[ -n $alt ]] || die "module proxy $(go env GOPROXY) serves neither $MODULE@v$want nor a version list; set APPTAINER_VERSION=vX.Y.Z to one it serves"
    want=${alt#v}
    src=$(download_module "v$want") || die "cannot download $MODULE@v$want"
  fi
  log "module source: $src"
  phase_done

  local work="$CACHE/$want"
  local tree="$work/src" build="$work/src/builddir"
  if [[ ! -f $work/.configured ]]; then
    phase "configure apptainer $want in $tree"
    rm -rf "$work"
    mkdir -p "$work"
    # The module cache is read-only; the build writes into its tree.
    cp -r "$src" "$tree"
    chmod -R u+w "$tree"
    # Module zips do not keep file modes: make every script executable again.
    grep -rlI --null -m1 '^#!' "$tree" | xargs -0 -r chmod +x
    # A module download has no .git, so mconfig's scripts/get-version reads VERSION.
    printf '%s\n' "$want" >"$tree/VERSION"
    (cd "$tree" && ./mconfig -b "$build" -p "$PREFIX" --without-suid --without-network) \
      >"$work/mconfig.log" 2>&1 || { tail -n 40 "$work/mconfig.log"; die "mconfig failed (log: $work/mconfig.log)"; }
    touch "$work/.configured"
    phase_done
  fi

  patch_starter "$tree"
  # .built records the starter source it was compiled from; make is incremental.
  local built_from
  built_from=$(sha256sum "$tree/cmd/starter/c/starter.c" | cut -d' ' -f1)
  if [[ ! -f $work/.built || $(<"$work/.built") != "$built_from" ]]; then
    phase "compile apptainer $want (log: $work/make.log)"
    # go build keeps an existing starter whose Go inputs did not change: the C
    # files it #includes are not part of Go's build ID.
    rm -f "$build/cmd/starter/c/starter"
    # The Makefile pins GOPROXY to proxy.golang.org; pass the machine's own.
    timeout 3600 make -C "$build" GOPROXY="$(go env GOPROXY)" >"$work/make.log" 2>&1 ||
      { tail -n 40 "$work/make.log"; die "make failed (log: $work/make.log)"; }
    printf '%s' "$built_from" >"$work/.built"
    phase_done
  else
    log "reusing compiled tree $build"
  fi

  phase "install apptainer $want into $PREFIX"
  timeout 600 make -C "$build" install >"$work/install.log" 2>&1 ||
    { tail -n 40 "$work/install.log"; die "make install failed (log: $work/install.log)"; }
  hash -r
  phase_done

  have=$(installed_version)
  [[ $have == "$want" ]] || die "after install, apptainer --version reports '${have:-nothing}', expected $want"
  installed_starter_patched || die "the installed starter lacks the bounding-set patch"
  log "apptainer version: $("$PREFIX/bin/apptainer" version)"
  log "apptainer $want installed in $PREFIX"
}

main "$@"
