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
    alive_pid=''
    if [ -s "$rundir/pid" ]; then read -r alive_pid < "$rundir/pid"; fi
    if [ -n "$alive_pid" ] && [ -r "/proc/$alive_pid/cmdline" ] &&
        tr '\0' ' ' < "/proc/$alive_pid/cmdline" 2> /dev/null | grep -qF "$rundir "; then
        return 0
    fi
    alive_slice=$SLICE
    if [ -d "$alive_slice/deploy-flake-$runid-activate.service" ] || [ -d "$alive_slice/deploy-flake-$runid-boot.service" ]; then
        return 0
    fi
    if [ -d "$alive_slice" ] && [ -n "$alive_pid" ]; then return 1; fi
    systemctl is-active --quiet "deploy-flake-$runid-activate.service" "deploy-flake-$runid-boot.service" 2> /dev/null
}

# show_log: print the run's log from line $log_seen + 1 on, complete lines
# only, and count them in $log_seen; each call reads on from where the last
# one stopped (the log stays open on fd 4), without a process of its own.
show_log() {
    if [ -z "$log_open" ]; then
        [ -e "$rundir/log" ] || return 0
        exec 4< "$rundir/log"
        log_open=1 log_skip=$log_seen log_pending=''
        while [ "$log_skip" -gt 0 ] && IFS= read -r log_line <&4; do log_skip=$((log_skip - 1)); done
    fi
    log_line=''
    while IFS= read -r log_line <&4; do
        printf '%s\n' "$log_pending$log_line"
        log_pending='' log_line=''
        log_seen=$((log_seen + 1))
    done
    # A line still being written: the rest comes with the next read.
    log_pending="$log_pending$log_line"
}

# The system that ran before the activation, for the deployer.
say_previous() {
    said_previous=''
    if [ -e "$rundir/previous" ]; then read -r said_previous < "$rundir/previous"; fi
    echo "deploy-flake-previous $runid $said_previous"
}

# watch SKIP_LINES STATES [HEALTH_SECS]: the run's log from line
# SKIP_LINES + 1 on, as it grows, while the run is in one of STATES (the
# deployer's words, comma-separated; `starting`: no state written yet);
# then its state.
watch() {
    log_seen=$1 log_open='' watch_through=${2:-} watch_health=${3:-}
    # A state change wakes the watch at once (set_status); new log lines
    # are shown at the next tick.
    nap_init
    watch_checked=0 watch_pace=50 watch_gone=0
    while :; do
        if [ ! -d "$rundir" ]; then
            nap_done
            echo "deploy-flake-previous $runid"
            echo "deploy-flake-status $runid vanished rebooted the run's state is gone from the host: it rebooted (or /run was cleared)"
            return
        fi
        # Status first: every line logged before a state change is printed
        # before the watch returns.
        watch_status=''
        if [ -e "$rundir/status" ]; then read -r watch_status < "$rundir/status"; fi
        watch_state=${watch_status%% *}
        show_log
        case ",$watch_through," in
            *",${watch_state:-starting},"*) ;;
            *) break ;;
        esac
        if watch_agent_gone; then
            nap_done
            say_previous
            echo "deploy-flake-status $runid vanished lost $(gone_why "$watch_state")"
            return
        fi
        nap
    done
    nap_done
    show_log
    say_previous
    watch_answer
}

# watch_answer: the state the watch saw (not the file again: the agent may
# have gone on); the health first, when the deployer asked for it with an
# answer awaiting its confirmation (it checks the health before it
# confirms: answered here, it costs no round trip of its own).
watch_answer() {
    if [ -n "$watch_health" ] && [ "$watch_state" = awaiting-confirmation ]; then
        health "$watch_health" | sed "s/^deploy-flake-/deploy-flake-health $runid /"
    fi
    echo "deploy-flake-status $runid $watch_status"
}

# watch_agent_gone: every few seconds of a state that changes on its own,
# is the agent still there to change it? Gone twice in a row, a second or
# more apart, and the state unchanged: it was stopped or killed.
watch_agent_gone() {
    case "${watch_state:-starting}" in
        starting | activating | awaiting-confirmation | rolling-back | booting) ;;
        *) return 1 ;;
    esac
    [ $((waited - watch_checked)) -ge "$watch_pace" ] || return 1
    watch_checked=$waited watch_pace=50
    if agent_alive; then
        watch_gone=0
        return 1
    fi
    watch_last=''
    if [ -e "$rundir/status" ]; then read -r watch_last _ < "$rundir/status"; fi
    if [ "$watch_last" != "$watch_state" ]; then
        watch_gone=0
    elif [ "$watch_gone" = 1 ]; then
        return 0
    else
        watch_gone=1 watch_pace=10
    fi
    return 1
}

# gone_why STATE: why the run's agent ended in STATE without a state that
# says so: what it said on its way out (its unit's journal), or that it was
# stopped or killed.
gone_why() {
    gone_said=$(journalctl --no-pager --quiet --output=cat -u "deploy-flake-$runid-activate.service" \
        -u "deploy-flake-$runid-boot.service" 2> /dev/null | sed -n 's/^deploy-flake agent: //p' | tail -n 2)
    if [ -n "$gone_said" ]; then
        printf 'the agent stopped while %s: %s\n' "${1:-starting}" "$(printf '%s' "$gone_said" | tr '\n' ' ')"
    else
        echo "the agent ended while ${1:-starting}: it was stopped or killed"
    fi
}

# launch SKIP_LINES STATES HEALTH_SECS CMD...
launch() {
    launch_seen=$1 launch_through=$2 launch_health=$3
    shift 3
    "$@" || exit
    echo "deploy-flake-delivered"
    watch "$launch_seen" "$launch_through" "$launch_health"
}

# For the deployer's confirm and abort: the run must still be there.
existing_run() {
    [ -d "$rundir" ] || { echo "deploy-flake agent: no run $rundir on this host" >&2; exit 1; }
}

# confirm [SKIP_LINES STATES]
confirm() {
    existing_run
    : > "$rundir/confirmed" || exit 1
    wake_all
    # With SKIP_LINES: follow the agent to its answer, as `watch` does.
    if [ -n "${1:-}" ]; then
        echo "deploy-flake-delivered"
        watch "$1" "${2:-}"
    fi
}

abort() {
    existing_run
    cat > "$rundir/abort.tmp" && mv -f "$rundir/abort.tmp" "$rundir/abort" || exit 1
    wake_all
}

probe() {
    if [ -e "$rundir/status" ] || agent_alive; then
        echo "deploy-flake-started yes"
    fi
}
