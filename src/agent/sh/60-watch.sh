# shellcheck shell=sh
# Following a run for the deployer (watch, launch, probe) and its
# confirmation and abort.
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

# Is the run's agent (its activate or boot unit) still there? Asked of the
# kernel, not of systemd, which may be busy or re-executing itself: the
# agent's pid, then the unit's cgroup; systemd only without either (no
# cgroup v2, or the agent not yet started).
agent_alive() {
    apid=''
    if [ -s "$rundir/pid" ]; then read -r apid < "$rundir/pid"; fi
    if [ -n "$apid" ] && [ -r "/proc/$apid/cmdline" ] &&
        tr '\0' ' ' < "/proc/$apid/cmdline" 2> /dev/null | grep -qF "$rundir "; then
        return 0
    fi
    slice=/sys/fs/cgroup/system.slice
    if [ -d "$slice/deploy-flake-$runid-activate.service" ] || [ -d "$slice/deploy-flake-$runid-boot.service" ]; then
        return 0
    fi
    if [ -d "$slice" ] && [ -n "$apid" ]; then return 1; fi
    systemctl is-active --quiet "deploy-flake-$runid-activate.service" "deploy-flake-$runid-boot.service" 2> /dev/null
}

# show_log: print the run's log from line $seen + 1 on, complete lines
# only, and count them in $seen; each call reads on from where the last one
# stopped (the log stays open on fd 4), without a process of its own.
show_log() {
    if [ -z "$log_open" ]; then
        [ -e "$rundir/log" ] || return 0
        exec 4< "$rundir/log"
        log_open=1 skip=$seen pending=''
        while [ "$skip" -gt 0 ] && IFS= read -r line <&4; do skip=$((skip - 1)); done
    fi
    line=''
    while IFS= read -r line <&4; do
        printf '%s\n' "$pending$line"
        pending='' line=''
        seen=$((seen + 1))
    done
    # A line still being written: the rest comes with the next read.
    pending="$pending$line"
}

# The system that ran before the activation, for the deployer.
say_previous() {
    previous=''
    if [ -e "$rundir/previous" ]; then read -r previous < "$rundir/previous"; fi
    echo "deploy-flake-previous $runid $previous"
}

watch() {
    rundir=$1 seen=$2 patient=${3:-} health_secs=${4:-}
    runid=${rundir##*/} log_open=
    # A state change wakes the watch at once (set_status); new log lines
    # are shown at the next tick.
    nap_init
    checked=0 pace=50 gone=0
    while :; do
        if [ ! -d "$rundir" ]; then
            nap_done
            echo "deploy-flake-previous $runid"
            echo "deploy-flake-status $runid vanished rebooted the run's state is gone from the host: it rebooted (or /run was cleared)"
            return
        fi
        # Status first: every line logged before a state change is printed
        # before the watch returns.
        status=''
        if [ -e "$rundir/status" ]; then read -r status < "$rundir/status"; fi
        state=${status%% *}
        show_log
        case "${state:-starting}" in
            starting | activating | awaiting-confirmation | rolling-back | booting) transient=1 ;;
            *) transient='' ;;
        esac
        case " '' activating rolling-back booting $patient " in
            *" ${state:-''} "*) ;;
            *) break ;;
        esac
        # Every few seconds: is the agent still there to change the state?
        # Gone twice in a row, a second or more apart, and the state
        # unchanged: it was stopped or killed.
        if [ -n "$transient" ] && [ $((waited - checked)) -ge "$pace" ]; then
            checked=$waited pace=50
            if agent_alive; then
                gone=0
            else
                last=
                if [ -e "$rundir/status" ]; then read -r last _ < "$rundir/status"; fi
                if [ "$last" != "$state" ]; then
                    gone=0
                elif [ "$gone" = 1 ]; then
                    nap_done
                    say_previous
                    echo "deploy-flake-status $runid vanished lost $(gone_why)"
                    return
                else
                    gone=1 pace=10
                fi
            fi
        fi
        nap
    done
    nap_done
    show_log
    say_previous
    # The deployer checks the health before it confirms: answered here, it
    # costs no round trip of its own.
    if [ -n "$health_secs" ] && [ "$state" = awaiting-confirmation ]; then
        health "$health_secs" "$rundir" | sed "s/^deploy-flake-/deploy-flake-health $runid /"
    fi
    # The state seen, not the file again: the agent may have gone on.
    echo "deploy-flake-status $runid $status"
}

# Why the run's agent ended without a state that says so: what it said
# on its way out (its unit's journal), or that it was stopped or killed.
gone_why() {
    said=$(journalctl --no-pager --quiet --output=cat -u "deploy-flake-$runid-activate.service" \
        -u "deploy-flake-$runid-boot.service" 2> /dev/null | sed -n 's/^deploy-flake agent: //p' | tail -n 2)
    if [ -n "$said" ]; then
        printf 'the agent stopped while %s: %s\n' "${state:-starting}" "$(printf '%s' "$said" | tr '\n' ' ')"
    else
        echo "the agent ended while ${state:-starting}: it was stopped or killed"
    fi
}

launch() {
    rundir=$1 seen=$2 patient=$3 health_secs=$4
    shift 4
    "$@" || exit
    echo "deploy-flake-delivered"
    watch "$rundir" "$seen" "$patient" "$health_secs"
}

# For the deployer's confirm and abort: the run must still be there.
existing_run() {
    rundir=$1
    [ -d "$rundir" ] || { echo "deploy-flake agent: no run $rundir on this host" >&2; exit 1; }
}

confirm() {
    existing_run "$1"
    : > "$rundir/confirmed" || exit 1
    wake_all
    # With SKIP_LINES: follow the agent to its answer, as `watch` does.
    if [ -n "${2:-}" ]; then
        echo "deploy-flake-delivered"
        watch "$rundir" "$2" awaiting-confirmation
    fi
}

abort() {
    existing_run "$1"
    cat > "$rundir/abort.tmp" && mv -f "$rundir/abort.tmp" "$rundir/abort" || exit 1
    wake_all
}

probe() {
    rundir=$1
    runid=${rundir##*/}
    if [ -e "$rundir/status" ] || agent_alive; then
        echo "deploy-flake-started yes"
    fi
}
