#!/bin/bash
# Stop the Slurm that ci/slurm-up.sh started: cancel its jobs, then stop
# each daemon by its recorded PID (TERM, wait, KILL after a bound), then
# every process still running on an emulated node (found by the node's
# UTS namespace: slurmstepd, job tasks), then the cluster's own munged. Idempotent; never fails. Keeps logs, config and job state in $DIR;
# removes only the PID records, and the nodes' TmpFS under /tmp.
#
# Environment: CHRUN_SLURM_DIR (default /var/tmp/chrun-slurm),
# CHRUN_SLURM_TMPFS (as for slurm-up.sh, default /tmp/slurm-tmpfs),
# CHRUN_SLURM_STOP_WAIT seconds before KILL (default 10).
set -u

DIR=${CHRUN_SLURM_DIR:-/var/tmp/chrun-slurm}
WAIT=${CHRUN_SLURM_STOP_WAIT:-10}
TMPFS=${CHRUN_SLURM_TMPFS:-/tmp/slurm-tmpfs}
log() { printf 'slurm-down: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "must run as root"
    exit 0
fi
if [[ ! -d $DIR/run ]]; then
    log "nothing recorded in $DIR: nothing to stop"
    exit 0
fi

exec 9>"$DIR/lock"
flock -w 120 9 || log "warning: could not lock $DIR/lock; going on"

source "$(dirname "${BASH_SOURCE[0]}")/slurm-lib.sh"   # starttime, procstate, alive

# stop_pids LABEL PID...: TERM, wait up to $WAIT s, then KILL
stop_pids() {
    local label=$1; shift
    local pids=("$@") left p i st
    (( ${#pids[@]} )) || return 0
    log "stopping $label: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null
    for (( i = 0; i < WAIT * 10; i++ )); do
        left=()
        for p in "${pids[@]}"; do
            st=$(procstate "$p") && [[ $st != Z ]] && left+=("$p")
        done
        (( ${#left[@]} )) || return 0
        sleep 0.1
    done
    log "still running after $WAIT s, KILL: ${left[*]}"
    kill -KILL "${left[@]}" 2>/dev/null
    sleep 0.2
}

# Processes in the UTS namespaces recorded for the emulated nodes.
node_pids() {
    local want=() f p ns mine
    mine=$(readlink /proc/self/ns/uts) || return 0
    for f in "$DIR"/run/slurmd-*.uts; do
        [[ -s $f ]] || continue
        ns=$(cat "$f")
        # Never the namespace we run in ourselves: that is the whole host.
        [[ $ns == uts:* && $ns != "$mine" ]] || continue
        # Still the node's namespace (not a recycled inode number)? Its
        # slurmd ran when we began, or a slurmstepd still runs in it.
        if [[ " ${valid_uts[*]} " == *" $ns "* ]] || ns_has_stepd "$ns"; then
            want+=("$ns")
        fi
    done
    (( ${#want[@]} )) || return 0
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" || $p == "$BASHPID" ]] && continue
        ns=$(readlink "/proc/$p/ns/uts" 2>/dev/null) || continue
        for f in "${want[@]}"; do
            [[ $ns == "$f" ]] && { echo "$p"; break; }
        done
    done
}

ns_has_stepd() {
    local p
    for p in $(pgrep -x 'slurmstepd|slurmd' 2>/dev/null); do
        [[ $(readlink "/proc/$p/ns/uts" 2>/dev/null) == "$1" ]] && return 0
    done
    return 1
}

# UTS namespaces whose recorded slurmd runs now, before we stop it.
valid_uts=()
for f in "$DIR"/run/slurmd-*.uts; do
    [[ -s $f ]] || continue
    n=$(basename "$f" .uts)
    p=$(alive "$n") || continue
    [[ $(readlink "/proc/$p/ns/uts" 2>/dev/null) == "$(cat "$f")" ]] \
        && valid_uts+=("$(cat "$f")")
done

# 1. Cancel jobs while the controller still runs, so steps end cleanly.
if alive slurmctld >/dev/null && [[ -f $DIR/slurm.conf ]]; then
    export SLURM_CONF=$DIR/slurm.conf
    if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
        log "cancelling jobs: $(squeue -h -o %i 2>/dev/null | tr '\n' ' ')"
        scancel --quiet --partition=debug 2>/dev/null
        for _ in $(seq 50); do
            squeue -h -t all -o '%i %t' 2>/dev/null \
                | grep -qEv ' (CA|CD|F|TO|NF|PR|OOM|BF|DL)$' || break
            sleep 0.2
        done
    fi
fi

# 2. slurmd on each node, then the controller.
pids=()
for f in "$DIR"/run/slurmd-*.pid; do
    [[ -f $f ]] || continue
    n=$(basename "$f" .pid)
    p=$(alive "$n") && pids+=("$p")
done
stop_pids "slurmd" "${pids[@]}"
p=$(alive slurmctld) && stop_pids "slurmctld" "$p"

# 3. Anything left on the emulated nodes (slurmstepd, job tasks).
mapfile -t left < <(node_pids)
stop_pids "processes left on the emulated nodes" "${left[@]}"

# Safety net: daemons started with our config whose records are gone.
mapfile -t stray < <(pgrep -f -- "-f $DIR/slurm.conf\$" 2>/dev/null)
stop_pids "unrecorded daemons using $DIR/slurm.conf" "${stray[@]}"

# 4. Our munged (on its own socket in $DIR; a system munged is not ours).
p=$(alive munged) && stop_pids "munged" "$p"
mapfile -t stray < <(pgrep -f -- "^munged .*--socket=$DIR/munge/munge.socket " 2>/dev/null)
stop_pids "unrecorded munged on $DIR/munge/munge.socket" "${stray[@]}"

rm -f "$DIR"/run/*.pid "$DIR"/run/*.uts "$DIR"/run/*.pidfile

# The nodes' TmpFS (PMIx client dirs), which slurm-up.sh made under /tmp;
# only a real directory of root's (not a symlink someone planted).
if [[ -d $TMPFS && ! -L $TMPFS && $(stat -c %u "$TMPFS") == 0 ]]; then
    rm -rf --one-file-system -- "$TMPFS"
fi

# 5. Report anything that still looks like Slurm (not ours, or unkillable).
# Zombies (exited, waiting for PID 1 to reap them) do not count.
rest=$(for p in $(pgrep -x 'slurmctld|slurmd|slurmstepd|slurmscriptd' 2>/dev/null;
                  pgrep -f '^(slurmstepd|: slurmscriptd)' 2>/dev/null); do
           st=$(procstate "$p") && [[ $st != Z ]] && ps -o pid=,args= -p "$p"
       done)
if [[ -n $rest ]]; then
    log "warning: Slurm processes still running (not started by slurm-up.sh in $DIR?):"
    sort -u <<<"$rest" | sed 's/^/    /' >&2
else
    log "down: no slurmctld, slurmd or slurmstepd running"
fi
exit 0
