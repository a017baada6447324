#!/usr/bin/env bash
# Build the tiny busybox test image at ${CHRUN_IMAGES:-/var/tmp/chrun-images}/tiny
# with the static probes from tests/probes/*.c in usr/local/bin, then (unless
# CHRUN_SKIP_MPI_IMAGE is set) run ci/build-mpi-image.sh if present, then
# ci/build-squash-images.sh (IMAGES/{tiny,mpi}.sqfs for the SquashFS tests).
# The image is built in a temp dir and renamed into place; it is rebuilt only
# when this script, the probe sources or the busybox binary change (stamp file
# IMAGES/.tiny.stamp).
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
IMAGES=${CHRUN_IMAGES:-/var/tmp/chrun-images}
IMG=$IMAGES/tiny
BUSYBOX=/bin/busybox

if [[ -e $IMAGES || -L $IMAGES ]]; then
    if [[ -L $IMAGES || ! -d $IMAGES || $(stat -c %u "$IMAGES") != "$(id -u)" ]]; then
        echo "build-images.sh: $IMAGES is not a directory owned by $(id -un); remove it" >&2
        exit 1
    fi
else
    mkdir -p -m 755 "$IMAGES"
fi
chmod 755 "$IMAGES"

[[ -x $BUSYBOX ]] || { echo "build-images.sh: $BUSYBOX missing (apt-get install busybox-static)" >&2; exit 1; }
hash=$(cat "$0" tests/probes/*.c "$BUSYBOX" | sha256sum | cut -d' ' -f1)
stamp=$IMAGES/.tiny.stamp
if [[ -d $IMG && $(cat "$stamp" 2>/dev/null) == "$hash" ]]; then
    echo "build-images.sh: $IMG up to date"
else
    echo "build-images.sh: building $IMG"
    tmp=$(mktemp -d "$IMAGES/.tiny.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    mkdir -p "$tmp"/{bin,dev,proc,sys,tmp,home,etc,root,usr/bin,usr/local/bin} "$tmp"/mnt/{0..9}
    chmod 1777 "$tmp/tmp"
    cp "$BUSYBOX" "$tmp/bin/busybox"
    for applet in $("$BUSYBOX" --list); do
        [[ $applet == busybox || -e $tmp/bin/$applet ]] || ln -s busybox "$tmp/bin/$applet"
    done
    ln -s ../../bin/busybox "$tmp/usr/bin/env"   # for "#!/usr/bin/env" scripts
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' \
        > "$tmp/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$tmp/etc/group"
    printf '127.0.0.1 localhost\n::1 localhost\n' > "$tmp/etc/hosts"
    : > "$tmp/etc/resolv.conf"
    for src in tests/probes/*.c; do
        name=$(basename "$src" .c)-probe
        gcc -static -O2 -Wall -Wextra -o "$tmp/usr/local/bin/$name" "$src"
        strip "$tmp/usr/local/bin/$name" 2>/dev/null || true
    done
    chmod -R go+rX "$tmp"
    if [[ -e $IMG ]]; then
        mv "$IMG" "$tmp.old"
        mv "$tmp" "$IMG"
        rm -rf "$tmp.old"
    else
        mv "$tmp" "$IMG"
    fi
    trap - EXIT
    echo "$hash" > "$stamp"
    echo "build-images.sh: built $IMG ($(du -sh "$IMG" | cut -f1))"
fi

if [[ -z ${CHRUN_SKIP_MPI_IMAGE:-} && -f ci/build-mpi-image.sh ]]; then
    echo "build-images.sh: running ci/build-mpi-image.sh"
    bash ci/build-mpi-image.sh
fi

if [[ -f ci/build-squash-images.sh ]]; then
    bash ci/build-squash-images.sh
fi
