#!/usr/bin/env bash
# First command of the README (as root): install everything chrun needs, build
# the test images (CHRUN_SKIP_MPI_IMAGE=1 skips the MPI image), link ch-run and
# ch-mpirun (and their man pages) into /usr/local, create the plain user chrun-test, then run a
# small container as root and as chrun-test (demo).
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
VENV=/opt/chrun/venv
IMAGES=${CHRUN_IMAGES:-/var/tmp/chrun-images}
if [[ $(id -u) != 0 ]]; then
    echo "setup.sh: run me as root (sudo bash ci/setup.sh)" >&2
    exit 1
fi
exec 9>/run/chrun-ci.lock   # shared with ci/test.sh: one at a time
flock 9
bash ci/install-deps.sh 9>&-
bash ci/make-test-user.sh
CHRUN_IMAGES=$IMAGES bash ci/build-images.sh 9>&-
exec 9>&-
# The man pages come with the wheel (venv share/man/man1); man finds them next to PATH's
# /usr/local/bin through /usr/local/share/man.
mkdir -p /usr/local/share/man/man1
for s in ch-run ch-mpirun; do
    ln -sfn "$VENV/bin/$s" "/usr/local/bin/$s"
    ln -sfn "$VENV/share/man/man1/$s.1" "/usr/local/share/man/man1/$s.1"
done
demo='echo "  inside: $(id)"
      echo "  uid_map: $(cat /proc/self/uid_map | tr -s " ")   hostname: $(hostname)"
      echo "  CH_RUNNING=$CH_RUNNING   /: $(ls / | tr "\n" " ")"
      echo "  namespaces: $(/usr/local/bin/cma-probe nsinfo)"'
echo
echo "setup.sh: demo (host namespaces: user:$(stat -Lc %i /proc/self/ns/user) mnt:$(stat -Lc %i /proc/self/ns/mnt))"
echo "\$ ch-run $IMAGES/tiny -- sh -c '...'      # as root"
ch-run "$IMAGES/tiny" -- sh -c "$demo"
echo "\$ runuser -u chrun-test -- env HOME=/home/chrun-test ch-run $IMAGES/tiny -- sh -c '...'      # as a plain user"
runuser -u chrun-test -- env HOME=/home/chrun-test ch-run "$IMAGES/tiny" -- sh -c "$demo"
# man must find our pages first (not, e.g., Charliecloud's in /usr/share/man).
for s in ch-run ch-mpirun; do
    page=$(env -i PATH=/usr/local/bin:/usr/bin:/bin man -w "$s" 2>/dev/null || true)
    if [[ -z $page || $(readlink -f "$page") != $(readlink -f "$VENV/share/man/man1/$s.1") ]]; then
        echo "setup.sh: man $s finds '$page', not $VENV/share/man/man1/$s.1" >&2
        exit 1
    fi
done
echo "setup.sh: done; try: ch-run $IMAGES/tiny -- sh; man ch-run; man ch-mpirun"

# The main job: MPI ranks of one node in one joined container (skipped without the MPI image).
if [[ -d $IMAGES/mpi/opt/mpi-tests ]]; then
    echo
    echo "\$ mpirun.openmpi --oversubscribe -n 4 ch-mpirun -v $IMAGES/mpi -- /opt/mpi-tests/allreduce-ompi4      # as chrun-test"
    runuser -u chrun-test -- env HOME=/home/chrun-test PATH=/usr/local/bin:/usr/bin:/bin \
        timeout 120 mpirun.openmpi --oversubscribe -n 4 \
        ch-mpirun -v "$IMAGES/mpi" -- /opt/mpi-tests/allreduce-ompi4 2>&1 | grep -E 'mode|created|joined|^rank' | sort
    echo "setup.sh: all 4 ranks above show one user:/mnt: namespace pair: one container, CMA and ptrace work between them"
fi
