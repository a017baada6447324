# Shared by ci/slurm-up.sh and ci/slurm-down.sh (sourced; expects $DIR): recorded daemon
# PIDs, each with its start time so that a reused PID is never taken for ours.

# Start time of PID in clock ticks since boot (field 22 of /proc/PID/stat;
# parse after the last ')' because the command name may hold spaces).
starttime() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    local fields
    read -ra fields <<<"$s"
    echo "${fields[19]}"
}

procstate() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    echo "${s%% *}"
}

# record NAME PID: write "PID STARTTIME" to $DIR/run/NAME.pid
record() {
    local st
    st=$(starttime "$2") || return 1
    echo "$2 $st" > "$DIR/run/$1.pid"
}

# alive NAME: true if the recorded process still runs (same PID and start
# time); prints the PID
alive() {
    local f=$DIR/run/$1.pid pid st
    [[ -f $f ]] || return 1
    read -r pid st < "$f" || return 1
    [[ -n $pid && $(starttime "$pid" 2>/dev/null) == "$st" ]] || return 1
    [[ $(procstate "$pid") != Z ]] || return 1   # exited, not yet reaped
    echo "$pid"
}

