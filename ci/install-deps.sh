#!/usr/bin/env bash
# Install what chrun's tests need on a fresh Debian 12 machine (run as root):
# Debian packages, the venv /opt/chrun/venv (Debian's /usr/bin/python3) with
# chrun installed non-editable from the world-readable copy made by
# sync-src.sh, then ci/install-mpi.sh and ci/install-slurm.sh if present.
# Idempotent: apt is skipped when every package is installed, pip when the
# installed sources' hash is unchanged.
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
SRC=${CHRUN_CI_DIR:-/var/tmp/chrun-ci}/src
VENV=/opt/chrun/venv

pkgs=(busybox-static python3 python3-venv python3-dev gcc libc6-dev strace gdb
      procps util-linux rsync git ca-certificates passwd
      squashfuse squashfs-tools man-db)   # man-db: man ch-run
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps.sh: apt-get install ${missing[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${pkgs[@]}"
fi

# SquashFS images need FUSE: distributions ship /dev/fuse mode 0666, but where nothing runs
# udev (minimal VMs, containers) it can be 0600 or missing, and then no plain user can mount.
if [[ ! -e /dev/fuse ]]; then
    modprobe fuse 2>/dev/null || true
    [[ -e /dev/fuse ]] || mknod -m 0666 /dev/fuse c 10 229 \
        || echo "install-deps.sh: warning: no /dev/fuse: SquashFS images will not work" >&2
fi
if [[ -c /dev/fuse ]]; then
    chmod 0666 /dev/fuse
fi

[[ ${CHRUN_SRC_SYNCED:-} == 1 ]] || bash ci/sync-src.sh

if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "install-deps.sh: creating $VENV"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    /usr/bin/python3 -m venv "$VENV"
fi

# Hash everything that goes into the installed package (not the tests or CI).
hash=$( (cd "$SRC" && find . \( -path ./tests -o -path ./ci -o -path ./.ci \) -prune \
            -o -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1)
stamp=$VENV/.chrun-src.sha256
if [[ ! -x $VENV/bin/ch-run || $(cat "$stamp" 2>/dev/null) != "$hash" ]]; then
    echo "install-deps.sh: pip install $SRC[test] into $VENV"
    # Build from a scratch copy: setuptools writes build/ and *.egg-info in-tree.
    build=$(mktemp -d /var/tmp/chrun-build.XXXXXX)
    trap 'rm -rf "$build"' EXIT
    cp -a "$SRC/." "$build/"
    "$VENV/bin/python" -m pip install -q --no-input "$build[test]"
    rm -rf "$build"
    trap - EXIT
    echo "$hash" > "$stamp"
else
    echo "install-deps.sh: $VENV up to date"
fi
chmod -R go+rX /opt/chrun

for s in ci/install-mpi.sh ci/install-slurm.sh; do
    if [[ -f $s ]]; then
        echo "install-deps.sh: running $s"
        bash "$s"
    fi
done
