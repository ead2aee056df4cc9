# deploy-flake on-target agent (POSIX sh).
#
# Installed by the deployer as /run/deploy-flake/agent-<hash>.sh and run as
# root. `activate` and `boot` run inside a transient systemd unit, so they
# outlive the ssh connection that started them and finish on their own.
#
# Per-run state lives in a root-only directory RUNDIR:
#   status     one line: "<state> [<cause> <reason>]"; written atomically;
#              <cause> is a machine-readable word (activation-failed,
#              timeout, not-confirmed, health-check, boot-entry, ...)
#   previous   the system that was running before the activation
#   log        everything switch-to-configuration printed
#   confirmed  created by the deployer over a fresh ssh login
#   abort      created by the deployer to stop the activation or refuse
#              the confirmation: one line "<cause> <reason>"
#   toplevel   GC root of the run's system until the system profile holds it
# A run only ever looks at its own RUNDIR, so nothing left by an earlier
# run can confirm a later one.
#
#   agent.sh activate RUNDIR TOPLEVEL ACTIVATE_SECS CONFIRM_SECS MAGIC_ROLLBACK(1|0)
#   agent.sh boot RUNDIR TOPLEVEL [GENERATION]   (GENERATION: switch the profile back to it)
#   agent.sh watch RUNDIR SKIP_LINES [STATE]   (also keeps waiting while in STATE)
#   agent.sh hold INFO            (run under flock: holds the host lock until stdin closes;
#                                  says "deploy-flake-locked" once it holds it)
#   agent.sh health SECS          (system state and failed units)
#   agent.sh facts TOPLEVEL [SELFCHECK]   (what the deployer needs to decide)
#
# Answers meant for the deployer are lines "deploy-flake-<what> <value>"; the
# final status of `watch` is printed as "deploy-flake-status RUNID STATE REASON".

set -u
PATH=/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:/run/wrappers/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 077
cd /

set_status() {
    printf '%s\n' "$*" > "$rundir/status.tmp" && mv -f "$rundir/status.tmp" "$rundir/status"
}

log() {
    printf 'deploy-flake: %s\n' "$*" >> "$rundir/log"
}

# run_bounded SECS CMD...: run CMD in its own process group, its output
# appended to the log. Returns its status, 124 on timeout, 125 on abort.
run_bounded() {
    limit=$(( $1 * 5 ))
    shift
    setsid "$@" >> "$rundir/log" 2>&1 < /dev/null &
    child=$!
    ticks=0
    while kill -0 "$child" 2> /dev/null; do
        why=
        if [ -e "$rundir/abort" ]; then
            why=125
        elif [ "$ticks" -ge "$limit" ]; then
            why=124
        fi
        if [ -n "$why" ]; then
            kill -TERM -"$child" 2> /dev/null
            n=0
            while kill -0 "$child" 2> /dev/null && [ "$n" -lt 25 ]; do
                sleep 0.2
                n=$((n + 1))
            done
            kill -KILL -"$child" 2> /dev/null
            wait "$child" 2> /dev/null
            return "$why"
        fi
        sleep 0.2
        ticks=$((ticks + 1))
    done
    wait "$child"
}

failed_units() {
    systemctl list-units --failed --plain --no-legend --no-pager 2> /dev/null | awk '{print $1}' | tr '\n' ' '
}

# The deployer's abort file: "<cause> <reason>".
abort_cause() {
    read -r cause _ < "$rundir/abort" 2> /dev/null
    printf '%s\n' "${cause:-aborted}"
}

abort_text() {
    read -r _ text < "$rundir/abort" 2> /dev/null
    printf '%s\n' "$text"
}

# roll_back CAUSE REASON
roll_back() {
    cause=$1 reason=$2
    # The system built for this run will not be booted: drop its GC root.
    rm -f "$rundir/toplevel"
    failed=$(failed_units)
    if [ -n "$failed" ]; then
        log "failed units: $failed"
    fi
    if [ "$magic" != 1 ]; then
        set_status failed "$cause" "$reason"
        return
    fi
    if [ -z "$previous" ] || [ ! -x "$previous/bin/switch-to-configuration" ]; then
        set_status rollback-failed "$cause" "$reason; no previous system to return to"
        return
    fi
    set_status rolling-back "$cause" "$reason"
    log "rolling back to $previous: $reason"
    rm -f "$rundir/abort"
    run_bounded "$activate_secs" "$previous/bin/switch-to-configuration" test
    rc=$?
    if [ "$rc" = 0 ] || [ "$rc" = 4 ]; then
        # Units that failed under the abandoned configuration stay "failed"
        # in systemd's memory; the report already named them.
        systemctl reset-failed 2> /dev/null
    fi
    now=$(readlink -f /run/current-system 2> /dev/null)
    if [ "$rc" = 0 ] && [ "$now" = "$previous" ]; then
        set_status rolled-back "$cause" "$reason"
    else
        set_status rollback-failed "$cause" "$reason; re-activating $previous exited with $rc"
    fi
}

activate() {
    rundir=$1 toplevel=$2 activate_secs=$3 confirm_secs=$4 magic=$5
    previous=
    if [ -e /run/current-system ]; then
        previous=$(readlink -f /run/current-system)
    fi
    printf '%s\n' "$previous" > "$rundir/previous"
    set_status activating
    log "activating $toplevel (previous: ${previous:-none})"
    run_bounded "$activate_secs" "$toplevel/bin/switch-to-configuration" test
    rc=$?
    case "$rc" in
        0) ;;
        124) roll_back timeout "activation did not finish within ${activate_secs}s"; return ;;
        125) roll_back "$(abort_cause)" "activation aborted by the deployer: $(abort_text)"; return ;;
        4) roll_back activation-failed "switch-to-configuration test exited with 4 (a unit failed)"; return ;;
        *) roll_back activation-failed "switch-to-configuration test exited with $rc"; return ;;
    esac
    set_status awaiting-confirmation
    ticks=0
    limit=$((confirm_secs * 5))
    while [ ! -e "$rundir/confirmed" ]; do
        if [ -e "$rundir/abort" ]; then
            roll_back "$(abort_cause)" "not confirmed: $(abort_text)"
            return
        fi
        if [ "$ticks" -ge "$limit" ]; then
            roll_back not-confirmed "no confirmation within ${confirm_secs}s"
            return
        fi
        sleep 0.2
        ticks=$((ticks + 1))
    done
    set_status confirmed
    log "confirmed"
}

boot() {
    rundir=$1 toplevel=$2 generation=${3:-}
    set_status booting
    if [ -n "$generation" ]; then
        nix-env -p /nix/var/nix/profiles/system --switch-generation "$generation" >> "$rundir/log" 2>&1
    else
        nix-env -p /nix/var/nix/profiles/system --set "$toplevel" >> "$rundir/log" 2>&1
    fi
    if [ $? != 0 ] || [ "$(readlink -f /nix/var/nix/profiles/system)" != "$toplevel" ]; then
        set_status boot-failed boot-entry "the system profile could not be pointed at $toplevel"
        return
    fi
    "$toplevel/bin/switch-to-configuration" boot >> "$rundir/log" 2>&1 < /dev/null
    rc=$?
    # The system profile holds the system now.
    rm -f "$rundir/toplevel"
    if [ "$rc" = 0 ]; then
        set_status booted
    else
        set_status boot-failed boot-entry "switch-to-configuration boot exited with $rc"
    fi
}

watch() {
    rundir=$1 seen=$2 patient=${3:-}
    runid=${rundir##*/}
    while :; do
        # Status first: every line logged before a state change is printed
        # before the watch returns.
        state= total=0
        if [ -e "$rundir/status" ]; then read -r state _ < "$rundir/status"; fi
        if [ -e "$rundir/log" ]; then total=$(wc -l < "$rundir/log"); fi
        if [ "$total" -gt "$seen" ]; then
            sed -n "$((seen + 1)),${total}p" "$rundir/log"
            seen=$total
        fi
        case " '' starting activating rolling-back booting $patient " in
            *" ${state:-''} "*) sleep 0.2 ;;
            *) break ;;
        esac
    done
    if [ -e "$rundir/log" ]; then sed -n "$((seen + 1)),\$p" "$rundir/log"; fi
    echo "deploy-flake-previous $runid $(cat "$rundir/previous" 2> /dev/null)"
    echo "deploy-flake-status $runid $(cat "$rundir/status" 2> /dev/null)"
}

active_activations() {
    systemctl list-units --plain --no-legend --no-pager --state=active,activating,deactivating 'deploy-flake-*' 2> /dev/null |
        awk '{print "deploy-flake-busy " $1}'
}

health() {
    state=$(timeout "$1" systemctl is-system-running --wait 2> /dev/null)
    rc=$?
    if [ "$rc" = 124 ]; then state="still-starting-after-${1}s"; fi
    echo "deploy-flake-state ${state:-unknown}"
    systemctl list-units --failed --plain --no-legend --no-pager 2> /dev/null | awk '{print "deploy-flake-failed " $1}'
}

facts() {
    toplevel=$1 selfcheck=${2:-pre-activate-safety-checks}
    echo "deploy-flake-current $(readlink -e /run/current-system)"
    echo "deploy-flake-profile $(readlink -e /nix/var/nix/profiles/system)"
    if [ -x "$toplevel/bin/switch-to-configuration" ]; then echo "deploy-flake-switchable yes"; fi
    if [ -x "$toplevel/$selfcheck" ]; then echo "deploy-flake-selfcheck $toplevel/$selfcheck"; fi
    if [ -d /run/systemd/system ]; then echo "deploy-flake-systemd yes"; fi
    active_activations
}

hold() {
    printf '%s\n' "$1" > /run/deploy-flake/lock.info
    active_activations
    echo deploy-flake-locked
    cat > /dev/null
    rm -f /run/deploy-flake/lock.info
}

cmd=$1
shift
case "$cmd" in
    activate) activate "$@" ;;
    boot) boot "$@" ;;
    watch) watch "$@" ;;
    hold) hold "$@" ;;
    health) health "$@" ;;
    facts) facts "$@" ;;
    *) echo "deploy-flake agent: unknown command $cmd" >&2; exit 2 ;;
esac
exit 0
