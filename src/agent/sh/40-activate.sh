# shellcheck shell=sh
# The activation: the guard before it, the confirmation wait after it,
# and the rollback when no confirmation comes.
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

failed_units() {
    systemctl list-units --failed --plain --no-legend --no-pager 2> /dev/null | awk '{printf "%s ", $1}'
}

# The units failed now that had not failed before the activation.
new_failed() {
    before=" $(cat "$rundir/failed-before" 2> /dev/null) "
    for unit in $(failed_units); do
        case "$before" in *" $unit "*) ;; *) printf '%s ' "$unit" ;; esac
    done
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

# roll_back CAUSE REASON: return to the previous system (magicRollback),
# or leave the new one running unconfirmed.
roll_back() {
    cause=$1 reason=$2
    # The system built for this run will not be booted: drop its GC root.
    rm -f "$rundir/toplevel"
    new=$(new_failed)
    if [ -n "$new" ]; then
        log "failed units: $new"
    fi
    if [ "$magic" != 1 ]; then
        # The new system stays, with its keys.
        keys_drop
        set_status failed "$cause" "$reason"
        return
    fi
    if [ -z "$previous" ] || [ ! -x "$previous/bin/switch-to-configuration" ]; then
        keys_restore
        set_status rollback-failed "$cause" "$reason; no previous system to return to"
        return
    fi
    set_status rolling-back "$cause" "$reason"
    log "rolling back to $previous: $reason"
    # The keys the previous system ran with, before it runs again.
    keys_restore
    # What failed under the abandoned system is not the previous system's
    # doing: clear it, so that what fails now is what the rollback left.
    for unit in $new; do systemctl reset-failed "$unit" 2> /dev/null; done
    # Returning to the system that ran a moment ago: its own pre-switch
    # checks must not refuse it, and nothing may stop it halfway (not the
    # deployer's abort, nor an activate timeout meant for the new system).
    run_bounded "$rollback_secs" 0 env NIXOS_NO_CHECK=1 "$previous/bin/switch-to-configuration" test
    rc=$?
    now=$(readlink -f "$CURRENT" 2> /dev/null)
    left=$(new_failed)
    still=$(failed_units)
    if [ "$now" = "$previous" ] && [ -z "$left" ] && { [ "$rc" = 0 ] || [ "$rc" = 2 ] || [ "$rc" = 4 ]; }; then
        if [ -n "$still" ]; then
            reason="$reason (units that had failed before are still failed: $still)"
        fi
        set_status rolled-back "$cause" "$reason"
    elif [ "$now" = "$previous" ] && [ -n "$left" ]; then
        set_status rollback-failed "$cause" "$reason; back on the previous system, but these units failed: $left"
    else
        set_status rollback-failed "$cause" "$reason; re-activating $previous exited with $rc"
    fi
}

# begin RUNDIR: the start of an action (activate, boot): the agent's pid,
# for whoever asks whether it is still there; then, may the run change the
# host? Not when it does not hold the host lock (its deployer stalled
# longer than the lock holder waits, and another run may hold it now),
# nor while another run activates or writes a boot entry. Refused, it
# changes nothing.
begin() {
    rundir=$1 runid=${1##*/}
    printf '%s\n' "$$" > "$rundir/pid"
    pid='' holder=''
    if [ -s "$STATE/lock.pid" ]; then read -r pid holder < "$STATE/lock.pid"; fi
    if [ "$holder" != "$runid" ] || ! holder_alive "$pid" "$runid"; then
        rm -rf "$rundir/staged-keys"
        set_status refused lock-lost "this run lost the host lock (its deployer was silent for longer than the lock holder waits); nothing was changed"
        return 1
    fi
    for unit in $(switches_in_progress); do
        case "$unit" in
            deploy-flake-"$runid"-*) ;;
            deploy-flake-*-activate.service | deploy-flake-*-boot.service)
                rm -rf "$rundir/staged-keys"
                set_status refused busy "another run is changing the host ($unit); nothing was changed"
                return 1
                ;;
        esac
    done
}

# still_running WHEN: the host runs the run's system; otherwise another
# switch (an administrator's switch-to-configuration, an automatic
# upgrade) replaced it, and the run ends `superseded` WHEN: nothing of it is
# recorded, no boot entry written, nothing rolled back.
still_running() {
    now_running=$(readlink -f "$CURRENT" 2> /dev/null)
    [ "$now_running" = "$toplevel" ] && return 0
    rm -f "$rundir/toplevel" && rm -rf "$rundir/staged-keys"
    log "another switch replaced $toplevel $1: the host runs ${now_running:-nothing}"
    set_status superseded superseded "another switch replaced the run's system $1: the host runs ${now_running:-nothing}; no boot entry was written"
    return 1
}

# activation_ended RC: what the exit status RC of `switch-to-configuration
# test` means. Returns 0 when the new system runs and awaits its
# confirmation, 1 when the run ended here (refused, or rolled back).
activation_ended() {
    rc=$1
    case "$rc" in
        0) ;;
        4)
            new=$(new_failed)
            if [ -n "$new" ]; then
                roll_back activation-failed "switch-to-configuration test exited with 4; failed units: $new"
                return 1
            fi
            log "switch-to-configuration test exited with 4 only for units that had failed before: $(cat "$rundir/failed-before")"
            ;;
        2) roll_back activation-script "the activation script failed (switch-to-configuration test exited with 2)"; return 1 ;;
        11)
            rm -f "$rundir/toplevel"
            keys_restore
            set_status refused busy "another switch-to-configuration holds its lock (nixos-rebuild or an automatic upgrade is switching this host); nothing was activated"
            return 1
            ;;
        100)
            rm -f "$rundir/toplevel"
            keys_restore
            set_status refused reboot-required "the new system's init is incompatible with the running one (switch-to-configuration test exited with 100); nothing was activated"
            return 1
            ;;
        124) roll_back timeout "activation did not finish within ${activate_secs}s"; return 1 ;;
        125) roll_back "$(abort_cause)" "activation aborted by the deployer: $(abort_text)"; return 1 ;;
        *) roll_back activation-failed "switch-to-configuration test exited with $rc"; return 1 ;;
    esac
    return 0
}

# await_confirmation: wait for the deployer's confirmation; $cause and
# $reason say why the wait ended without it (both empty: confirmed).
await_confirmation() {
    # The window measures the deployer's liveness, not its speed: each of
    # its heartbeats (through the lock holder, `alive`) restarts it, so a
    # slow, busy deployer is waited for, and one that died or lost the host
    # is not: the host goes back WINDOW_SECS after its last sign of life
    # (and in any case HARD_SECS after the activation).
    # The deployer's confirmation and abort wake this wait (wake_all).
    uptime_now
    since=$now
    hard=$((now + hard_secs))
    nap_init bounded
    next=0 cause='' reason=''
    while [ ! -e "$rundir/confirmed" ]; do
        if [ -e "$rundir/abort" ]; then
            cause=$(abort_cause) reason="not confirmed: $(abort_text)"
            break
        fi
        # Once a second: the deadlines.
        if [ "$waited" -ge "$next" ]; then
            next=$((waited + 10))
            uptime_now
            beat=''
            if [ -e "$rundir/alive" ]; then read -r beat < "$rundir/alive"; fi
            case "$beat" in
                '' | *[!0-9]*) ;;
                *) if [ "$beat" -gt "$since" ]; then since=$beat; fi ;;
            esac
            if [ $((now - since)) -ge "$window_secs" ]; then
                cause=not-confirmed reason="no confirmation within ${window_secs}s of the deployer's last sign of life"
                break
            fi
            if [ "$now" -ge "$hard" ]; then
                cause=not-confirmed reason="no confirmation within ${hard_secs}s"
                break
            fi
        fi
        nap
    done
    nap_done
}

activate() {
    rundir=$1 toplevel=$2 activate_secs=$3 window_secs=$4 hard_secs=$5 rollback_secs=$6 grace_secs=$7
    magic=$8 then_boot=$9
    shift 9
    stc_env "$@"
    begin "$rundir" || return 0
    previous=
    if [ -e "$CURRENT" ]; then
        previous=$(readlink -f "$CURRENT")
    fi
    printf '%s\n' "$previous" > "$rundir/previous"
    failed_units > "$rundir/failed-before"
    set_status activating
    log "activating $toplevel (previous: ${previous:-none})"
    if ! keys_install pre; then
        keys_restore
        rm -f "$rundir/toplevel"
        set_status refused keys "a pre-activation key could not be written (see the log); nothing was activated"
        return
    fi
    # shellcheck disable=SC2086 # allow-listed words
    run_bounded "$activate_secs" 1 env $stc_env "$toplevel/bin/switch-to-configuration" test
    rc=$?
    activation_ended "$rc" || return 0
    keys_own
    set_status awaiting-confirmation
    await_confirmation
    if [ -n "$cause" ]; then
        roll_back "$cause" "$reason"
        return
    fi
    still_running "before the confirmation was recorded" || return 0
    # Post-activation keys once confirmed; one that cannot be written takes
    # the host back, with the keys it had.
    if ! keys_install post; then
        roll_back keys "a post-activation key could not be written (see the log)"
        return
    fi
    keys_drop
    record confirmed "$toplevel"
    set_status confirmed
    log "confirmed"
    # Only a confirmed system becomes the boot entry; the agent writes it
    # at once, whether or not the deployer is still there to see it.
    if [ "$then_boot" = 1 ]; then
        still_running "before its boot entry was written" || return 0
        boot "$rundir" "$toplevel" "$@"
    fi
}
