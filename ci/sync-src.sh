#!/usr/bin/env bash
# Copy the checkout's tracked + untracked-not-ignored files to a root-owned,
# world-readable tree (default /var/tmp/chrun-ci/src), so that the test user
# can read the sources even when the checkout itself is private (e.g. /root).
# The copy is rebuilt from scratch each time (small repo: well under a second).
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
CI_DIR=${CHRUN_CI_DIR:-/var/tmp/chrun-ci}
SRC=$CI_DIR/src

# /var/tmp is world-writable: refuse a pre-existing CI dir we do not own.
if [[ -e $CI_DIR || -L $CI_DIR ]]; then
    if [[ -L $CI_DIR || ! -d $CI_DIR || $(stat -c %u "$CI_DIR") != "$(id -u)" ]]; then
        echo "sync-src.sh: $CI_DIR is not a directory owned by $(id -un); remove it" >&2
        exit 1
    fi
else
    mkdir -m 755 "$CI_DIR"
fi
chmod 755 "$CI_DIR"

tmp=$(mktemp -d "$CI_DIR/.src.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # -c lists tracked files deleted in the work tree too: copy only those that exist.
    git ls-files -z -co --exclude-standard \
        | while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf - | tar -xf - -C "$tmp" --no-same-owner
else
    tar -cf - --exclude=.git --exclude=__pycache__ --exclude='*.egg-info' \
        --exclude=./build --exclude=./dist --exclude=./.venv . \
        | tar -xf - -C "$tmp" --no-same-owner
fi
chmod -R u=rwX,go=rX "$tmp"
chmod 755 "$tmp"
rm -rf "$SRC"
mv "$tmp" "$SRC"
trap - EXIT
echo "sync-src.sh: copied $(find "$SRC" -type f | wc -l) files to $SRC"
