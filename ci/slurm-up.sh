#!/bin/bash
# Bring up a real Slurm (Debian 12's 22.05) with two emulated nodes, n1 and
# n2, on this one machine. Run as root, after ci/install-slurm.sh.
#
#   ci/slurm-up.sh              # start (or confirm it is already up)
#   srun -N 2 -n 4 hostname     # any user: prints n1 and n2
#   ci/slurm-down.sh            # stop everything this script started
#
# Every daemon is started with setsid, with stdin/stdout/stderr away from
# the caller's terminal or pipe, and its PID (plus its start time, so a
# recycled PID is never mistaken for it) is recorded in $DIR/run. Each
# slurmd runs in its own mount and UTS namespace (unshare -mu) with a
# private tmpfs on /dev/shm and its own hostname, so job steps on n1 and
# n2 see different hostnames and different /dev/shm, as on two real nodes.
#
# Environment:
#   CHRUN_SLURM_DIR        state dir (default /var/tmp/chrun-slurm)
#   CHRUN_SLURM_TIMEOUT    seconds to wait for idle nodes (default 30)
#   CHRUN_SLURM_CTLD_PORT  slurmctld port (default 16817)
#   CHRUN_SLURM_NODE_PORT  first slurmd port; n2 uses the next (default 17001)
#   CHRUN_SLURM_CPUS       CPUs each emulated node claims (default 8)
#   CHRUN_SLURM_ETC_CONF   where to install the config for plain srun
#                          (default /etc/slurm/slurm.conf; empty: nowhere)
#   CHRUN_SLURM_TMPFS      base of each node's TmpFS, a directory under /tmp
#                          so containers (ch-run binds the host's /tmp) see
#                          the PMIx client dirs (default /tmp/slurm-tmpfs)
#
# The config is written to $DIR/slurm.conf and installed as
# /etc/slurm/slurm.conf so plain srun/sbatch/sinfo work for every user;
# if /etc/slurm/slurm.conf exists and was not written by this script it is
# left alone, and you must `export SLURM_CONF=$DIR/slurm.conf`. To run a
# second, private cluster beside the default one, give it its own
# CHRUN_SLURM_DIR, ports and CHRUN_SLURM_ETC_CONF= (each cluster runs its
# own munged on a socket in its state dir; only the key is shared).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIR=${CHRUN_SLURM_DIR:-/var/tmp/chrun-slurm}
TIMEOUT=${CHRUN_SLURM_TIMEOUT:-30}
CTLD_PORT=${CHRUN_SLURM_CTLD_PORT:-16817}
NODE_PORT=${CHRUN_SLURM_NODE_PORT:-17001}
CPUS=${CHRUN_SLURM_CPUS:-8}
NODES=(n1 n2)
MARKER='# Written by chrun ci/slurm-up.sh'
ETC_CONF=${CHRUN_SLURM_ETC_CONF-/etc/slurm/slurm.conf}
TMPFS=${CHRUN_SLURM_TMPFS:-/tmp/slurm-tmpfs}

t_start=$(date +%s.%N)
log() { printf 'slurm-up: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# fail MSG: after something was started: print MSG and the logs, stop
# what runs, exit 1
fail() {
    local f
    log "error: $*"
    for f in "$DIR"/log/*; do
        echo "===== $f (last 40 lines)" >&2
        tail -n 40 "$f" >&2
    done
    flock -u 9
    "$here/slurm-down.sh" || true
    exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root"
for c in slurmctld slurmd srun sinfo munged unshare setsid setpriv flock; do
    command -v "$c" >/dev/null || die "$c not found; run ci/install-slurm.sh"
done

mkdir -p "$DIR"
chmod 0755 "$DIR"
# /tmp is world-writable: refuse a TmpFS base someone else made.
if [[ -L $TMPFS || ( -e $TMPFS && ( ! -d $TMPFS || $(stat -c %u "$TMPFS") != 0 ) ) ]]; then
    die "$TMPFS is not a directory owned by root; remove it"
fi
mkdir -p "$DIR/run" "$DIR/log" "$DIR/state" "$DIR/spool"
chmod 0755 "$DIR/log"

# One up/down at a time.
exec 9>"$DIR/lock"
flock -w 120 9 || die "could not lock $DIR/lock"

# --- recorded PIDs --------------------------------------------------------

source "$(dirname "${BASH_SOURCE[0]}")/slurm-lib.sh"   # starttime, procstate, record, alive

nodes_idle() {
    local out n
    out=$(sinfo -h -N -o '%N %t' 2>/dev/null) || return 1
    for n in "${NODES[@]}"; do
        grep -qx "$n idle" <<<"$out" || return 1
    done
}

conf_arg() {
    # Client commands read /etc/slurm/slurm.conf unless SLURM_CONF says
    # otherwise; point them at ours in any case.
    export SLURM_CONF=$DIR/slurm.conf
}

usage_hint() {
    local t
    t=$(awk -v a="$t_start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
    echo "slurm-up: Slurm is up (nodes ${NODES[*]} idle) after ${t} s; state in $DIR"
    if [[ $ETC_CONF == /etc/slurm/slurm.conf && $(head -n1 "$ETC_CONF" 2>/dev/null) == "$MARKER" ]] \
            && cmp -s "$DIR/slurm.conf" "$ETC_CONF"; then
        echo "slurm-up: config installed as $ETC_CONF: plain srun works for every user, e.g."
        echo "    srun -N 2 -n 4 hostname"
    else
        echo "slurm-up: /etc/slurm/slurm.conf is not this cluster's; first run"
        echo "    export SLURM_CONF=$DIR/slurm.conf"
    fi
    echo "slurm-up: logs in $DIR/log; stop with $here/slurm-down.sh"
}

# --- already up? ----------------------------------------------------------

daemons=(munged slurmctld "${NODES[@]/#/slurmd-}")
n_alive=0
for d in "${daemons[@]}"; do
    if alive "$d" >/dev/null; then n_alive=$((n_alive + 1)); fi
done
if (( n_alive == ${#daemons[@]} )); then
    conf_arg
    log "already running; waiting for idle nodes"
    deadline=$(( $(date +%s) + TIMEOUT ))
    until nodes_idle; do
        (( $(date +%s) < deadline )) || die "daemons run but nodes not idle: $(sinfo -h -N -o '%N %t' 2>&1 | tr '\n' ' ')"
        sleep 0.2
    done
    usage_hint
    exit 0
elif (( n_alive != 0 )) || compgen -G "$DIR/run/*.pid" >/dev/null; then
    log "partly up or stale records: stopping the rest first"
    flock -u 9
    "$here/slurm-down.sh"
    flock -w 120 9 || die "could not lock $DIR/lock"
fi

# --- munge ----------------------------------------------------------------

# Our own munged on a socket in $DIR (slurm.conf's AuthInfo points Slurm at
# it), so this cluster neither depends on nor disturbs a munged the system
# or another cluster runs on /run/munge; it shares only the key.
MUNGE_DIR=$DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket
munge_ok() {
    munge -S "$MUNGE_SOCKET" -n </dev/null 2>/dev/null \
        | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1
}

if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0600 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 "$MUNGE_DIR"
echo "===== $(date '+%F %T') slurm-up.sh starts munged" >>"$DIR/log/munged.out"
setsid setpriv --reuid=munge --regid=munge --init-groups \
    munged -F --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_DIR/munged.pid" \
    --seed-file="$MUNGE_DIR/munged.seed" --log-file=/dev/null \
    </dev/null >>"$DIR/log/munged.out" 2>&1 9>&- &
record munged $! || fail "munged died at once"
for _ in $(seq 100); do munge_ok && break; sleep 0.1; done
munge_ok || fail "munged does not answer on $MUNGE_SOCKET"
log "started munged (pid $(alive munged), socket $MUNGE_SOCKET)"

# --- config ---------------------------------------------------------------

host=$(hostname -s)
conf=$DIR/slurm.conf
{
    echo "$MARKER"
    echo "# ($DIR/slurm.conf; emulated nodes n1 and n2 on $host)"
    cat <<EOF
ClusterName=chrun
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
InactiveLimit=0
TmpFS=$TMPFS/%n
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pidfile
SlurmdPidFile=$DIR/run/slurmd-%n.pidfile
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EOF
    port=$NODE_PORT
    for n in "${NODES[@]}"; do
        echo "NodeName=$n NodeHostname=$host NodeAddr=127.0.0.1 Port=$port CPUs=$CPUS RealMemory=1000 State=UNKNOWN"
        port=$((port + 1))
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
} > "$conf.new"
chmod 0644 "$conf.new"
mv "$conf.new" "$conf"

# mpi.conf, next to slurm.conf (slurmstepd reads it from the directory of
# the slurm.conf slurmd was started with). Slurm's mpi/pmix gives each task
# a client directory (spmix_appdir_UID_JOB.STEP, where Open MPI puts its
# session directory) under PMIxCliTmpDirBase, or TmpFS if that is unset.
# Both must be under /tmp, which ch-run binds into every container. A real
# site can set PMIxCliTmpDirBase=/tmp/DIR; here it stays unset, so TmpFS
# (per node, as on real nodes) is used: Slurm 22.05 does not expand %n in
# PMIxCliTmpDirBase, and the emulated nodes share one /tmp. The server's
# shared-memory data store (PMIX_SERVER_TMPDIR, under SlurmdSpoolDir) is not
# visible inside either; PMIx would fall back after a "gds_ds12_lock" error
# on each rank: have the clients use the hash store at once.
{
    echo "$MARKER"
    echo "# PMIxCliTmpDirBase unset: client dirs go to TmpFS=$TMPFS/%n"
    echo "PMIxEnv=PMIX_MCA_gds=hash"
} > "$DIR/mpi.conf.new"
chmod 0644 "$DIR/mpi.conf.new"
mv "$DIR/mpi.conf.new" "$DIR/mpi.conf"

if [[ -z $ETC_CONF ]]; then
    :
elif [[ ! -e $ETC_CONF || $(head -n1 "$ETC_CONF" 2>/dev/null) == "$MARKER" ]]; then
    install -d -m 0755 "$(dirname "$ETC_CONF")"
    install -m 0644 "$conf" "$ETC_CONF.chrun-new"
    mv "$ETC_CONF.chrun-new" "$ETC_CONF"
else
    log "warning: $ETC_CONF exists and is not ours: left alone"
fi
conf_arg

# --- daemons --------------------------------------------------------------

# Start a daemon with setsid; as $! is the setsid process, which execs
# (we are not a process-group leader, so setsid does not fork), unshare
# (no --fork) and sh (exec) in turn, $! is the daemon's PID.
start() {   # start NAME COMMAND...
    local name=$1; shift
    echo "===== $(date '+%F %T') slurm-up.sh starts: $*" >>"$DIR/log/$name.out"
    # 9>&-: the daemon must not inherit (and so hold) our lock on $DIR/lock
    setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 9>&- &
    local pid=$!
    record "$name" "$pid" || fail "$name died at once"
}

start slurmctld slurmctld -D -i -f "$conf"

for n in "${NODES[@]}"; do
    mkdir -p "$DIR/spool/$n"
    # Node-local TmpFS: srun --mpi=pmix makes spmix_appdir_UID_JOB.STEP
    # there on every node, which collides in one shared /tmp.
    install -d -m 1777 "$TMPFS" "$TMPFS/$n"
    # shellcheck disable=SC2016
    start "slurmd-$n" unshare --mount --uts --propagation private sh -c '
        mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm || exit 1
        hostname "$1" || exit 1
        exec slurmd -D -N "$1" -f "$2"' sh "$n" "$conf"
done

# Wait until the last exec has happened, then note each node's UTS
# namespace: slurm-down.sh uses it to find every process left on a node.
# Never record the host's own namespace (slurm-down would then stop every
# process on the machine): only one that differs from ours, read after the
# exec of slurmd, which comes after unshare.
my_uts=$(readlink /proc/self/ns/uts)
for n in "${NODES[@]}"; do
    pid=$(alive "slurmd-$n") || continue
    for _ in $(seq 100); do
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == slurmd ]] && break
        sleep 0.05
    done
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == slurmd ]] || continue
    uts=$(readlink "/proc/$pid/ns/uts" 2>/dev/null) || continue
    [[ -n $uts && $uts != "$my_uts" ]] && echo "$uts" > "$DIR/run/slurmd-$n.uts"
done

# --- wait for idle nodes --------------------------------------------------

deadline=$(( $(date +%s) + TIMEOUT ))
while ! nodes_idle; do
    dead=()
    for d in "${daemons[@]}"; do alive "$d" >/dev/null || dead+=("$d"); done
    (( ${#dead[@]} == 0 )) || fail "died: ${dead[*]}"
    (( $(date +%s) < deadline )) \
        || fail "nodes not idle after $TIMEOUT s: $(sinfo -h -N -o '%N %t' 2>&1 | tr '\n' ' ')"
    sleep 0.2
done

for n in "${NODES[@]}"; do
    pid=$(alive "slurmd-$n") || continue
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == slurmd ]] \
        || log "warning: recorded PID $pid for slurmd-$n is $(cat "/proc/$pid/comm" 2>/dev/null)"
    [[ -s $DIR/run/slurmd-$n.uts ]] \
        || log "warning: no UTS namespace recorded for $n: slurm-down cannot sweep it"
done

if srun --mpi=list 2>&1 | grep -qw pmix; then
    log "srun --mpi=pmix available (MpiDefault=none)"
else
    log "warning: no pmix in srun --mpi=list"
fi
usage_hint
