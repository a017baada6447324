#!/usr/bin/env bash
# THE test command: bash ci/test.sh [PYTEST ARGS...]   (run as root)
#
#  1. copies the checkout to /var/tmp/chrun-ci/src (root-owned, world-readable)
#  2. install-deps.sh, make-test-user.sh, build-images.sh
#  3. if ci/slurm-up.sh exists: brings Slurm up (and ALWAYS down at exit via
#     ci/slurm-down.sh) and sets CHRUN_SLURM=1 for pytest
#  4. runs pytest on /var/tmp/chrun-ci/src/tests as root, then as chrun-test,
#     in a clean environment, each with its own basetemp under /var/tmp/chrun-ci
#     (deleted afterwards)
#  5. exits non-zero if either run failed; pytest's exit 5 (no tests) is a failure
set -euo pipefail
umask 022
cd "$(dirname "$0")/.."
CI_DIR=${CHRUN_CI_DIR:-/var/tmp/chrun-ci}
SRC=$CI_DIR/src
VENV=/opt/chrun/venv
TEST_USER=chrun-test
export CHRUN_IMAGES=${CHRUN_IMAGES:-/var/tmp/chrun-images}
t0=$SECONDS

if [[ $(id -u) != 0 ]]; then
    echo "test.sh: must run as root (it installs packages and creates $TEST_USER)" >&2
    exit 1
fi

# One test.sh at a time on this machine (it rebuilds $SRC). fd 9 is closed for
# every child below, so no daemon can keep holding the lock.
exec 9>/run/chrun-ci.lock
if ! flock -n 9; then
    echo "test.sh: another ci/test.sh is running; waiting for /run/chrun-ci.lock"
    flock 9
fi
bash ci/sync-src.sh 9>&-
CHRUN_SRC_SYNCED=1 bash ci/install-deps.sh 9>&-
bash ci/make-test-user.sh 9>&-
bash ci/build-images.sh 9>&-
echo "test.sh: setup took $((SECONDS - t0)) s"

slurm=0
slurm_down() {
    if ((slurm)) && [[ -f ci/slurm-down.sh ]]; then
        slurm=0
        echo "test.sh: bringing Slurm down"
        bash ci/slurm-down.sh 9>&- || echo "test.sh: warning: ci/slurm-down.sh failed" >&2
    fi
}
cleanup() {
    local rc=$?
    slurm_down
    rm -rf "$CI_DIR"/pytest-*
    return $rc
}
trap cleanup EXIT
if [[ -f ci/slurm-up.sh ]]; then
    slurm=1    # set first: bring it down even if slurm-up.sh fails half-way
    echo "test.sh: bringing Slurm up"
    bash ci/slurm-up.sh 9>&-
fi

# Clean environment for pytest; pass on CI, CHRUN_*, SLURM_CONF, PYTEST_ADDOPTS.
base_env=(PATH="$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
          LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1)
((slurm)) && base_env+=(CHRUN_SLURM=1)
while IFS='=' read -r -d '' name value; do
    case $name in
        CI|CHRUN_*|SLURM_CONF|PYTEST_ADDOPTS|TERM) base_env+=("$name=$value") ;;
    esac
done < <(env -0)

summary=()
total_pass=0 total_fail=0 total_skip=0 overall=0
run_pytest() {   # run_pytest USER HOME
    local user=$1 home=$2 dir=$CI_DIR/pytest-$1 rc
    shift 2
    rm -rf "$dir"
    # pytest deletes and re-creates --basetemp, so give it a parent the user owns.
    install -d -m 700 -o "$user" "$dir"
    echo
    echo "=== test.sh: pytest as $user ==="
    set +e
    (cd "$SRC" && runuser -u "$user" -- env -i "${base_env[@]}" HOME="$home" USER="$user" \
        LOGNAME="$user" timeout -k 30 "${CHRUN_TEST_TIMEOUT:-2400}" \
        "$VENV/bin/python" -P -m pytest --basetemp="$dir/tmp" \
        --junitxml="$dir/junit.xml" tests "$@") 9>&-
    rc=$?
    set -e
    # Count tests from the JUnit report (absent if pytest crashed).
    local counts
    counts=$("$VENV/bin/python" - "$dir/junit.xml" <<'PY' 2>/dev/null || echo "0 0 0"
import sys, xml.etree.ElementTree as ET
t = f = s = 0
for ts in ET.parse(sys.argv[1]).getroot().iter("testsuite"):
    t += int(ts.get("tests", 0)); s += int(ts.get("skipped", 0))
    f += int(ts.get("failures", 0)) + int(ts.get("errors", 0))
print(t - f - s, f, s)
PY
)
    read -r p f s <<<"$counts"
    local verdict=ok
    if ((rc == 5)); then verdict="FAILED (no tests collected)"
    elif ((rc == 124 || rc == 137)); then verdict="FAILED (timed out)"
    elif ((rc != 0)); then verdict=FAILED
    fi
    ((rc == 0)) || overall=1
    summary+=("$(printf '%-11s %s: %d passed, %d failed, %d skipped (pytest exit %d)' \
        "$user" "$verdict" "$p" "$f" "$s" "$rc")")
    total_pass=$((total_pass + p)) total_fail=$((total_fail + f)) total_skip=$((total_skip + s))
    rm -rf "$dir"
}
run_pytest root /root "$@"
run_pytest "$TEST_USER" "/home/$TEST_USER" "$@"

slurm_down   # here rather than in the EXIT trap, so the summary stays last

echo
echo "=== test.sh summary ($((SECONDS - t0)) s) ==="
printf '  %s\n' "${summary[@]}"
((overall == 0)) && verdict=PASS || verdict=FAIL
echo "$verdict: $total_pass passed, $total_fail failed, $total_skip skipped"
exit $overall
