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
    new_before=" $(cat "$rundir/failed-before" 2> /dev/null) "
    for new_unit in $(failed_units); do
        case "$new_before" in *" $new_unit "*) ;; *) printf '%s ' "$new_unit" ;; esac
    done
}

# The deployer's abort file: "<cause> <reason>".
abort_cause() {
    read -r abort_word _ < "$rundir/abort" 2> /dev/null
    printf '%s\n' "${abort_word:-aborted}"
}

abort_text() {
    read -r _ abort_said < "$rundir/abort" 2> /dev/null
    printf '%s\n' "$abort_said"
}

# roll_back CAUSE REASON: return to the previous system (magicRollback),
# or leave the new one running unconfirmed.
roll_back() {
    back_cause=$1 back_reason=$2
    # The system built for this run will not be booted: drop its GC root.
    rm -f "$rundir/toplevel"
    back_new=$(new_failed)
    if [ -n "$back_new" ]; then
        log "failed units: $back_new"
    fi
    if [ "$magic" != 1 ]; then
        # The new system stays, with its keys.
        keys_drop
        set_status failed "$back_cause" "$back_reason"
        return
    fi
    if [ -z "$previous" ] || [ ! -x "$previous/bin/switch-to-configuration" ]; then
        keys_restore
        set_status rollback-failed "$back_cause" "$back_reason; no previous system to return to"
        return
    fi
    set_status rolling-back "$back_cause" "$back_reason"
    log "rolling back to $previous: $back_reason"
    # The keys the previous system ran with, before it runs again.
    keys_restore
    # What failed under the abandoned system is not the previous system's
    # doing: clear it, so that what fails now is what the rollback left.
    for back_unit in $back_new; do systemctl reset-failed "$back_unit" 2> /dev/null; done
    # Returning to the system that ran a moment ago: its own pre-switch
    # checks must not refuse it, and nothing may stop it halfway (not the
    # deployer's abort, nor an activate timeout meant for the new system).
    run_bounded "$rollback_secs" 0 env NIXOS_NO_CHECK=1 "$previous/bin/switch-to-configuration" test
    rolled_back "$?" "$back_cause" "$back_reason"
}

# rolled_back RC CAUSE REASON: the state a rollback ends in, its
# switch-to-configuration having exited with RC: rolled back when the host
# runs the previous system and no unit failed that had not before.
rolled_back() {
    rolled_now=$(readlink -f "$CURRENT" 2> /dev/null)
    rolled_left=$(new_failed)
    rolled_still=$(failed_units)
    rolled_reason=$3
    if [ "$rolled_now" = "$previous" ] && [ -z "$rolled_left" ] && { [ "$1" = 0 ] || [ "$1" = 2 ] || [ "$1" = 4 ]; }; then
        if [ -n "$rolled_still" ]; then
            rolled_reason="$rolled_reason (units that had failed before are still failed: $rolled_still)"
        fi
        set_status rolled-back "$2" "$rolled_reason"
    elif [ "$rolled_now" = "$previous" ] && [ -n "$rolled_left" ]; then
        set_status rollback-failed "$2" "$rolled_reason; back on the previous system, but these units failed: $rolled_left"
    else
        set_status rollback-failed "$2" "$rolled_reason; re-activating $previous exited with $1"
    fi
}

# begin: the start of the run's action (activate, boot): the agent's pid,
# for whoever asks whether it is still there; then, may the run change the
# host? Not when it does not hold the host lock (its deployer stalled
# longer than the lock holder waits, and another run may hold it now),
# nor while another run activates or writes a boot entry. Refused, it
# changes nothing.
begin() {
    printf '%s\n' "$$" > "$rundir/pid"
    begin_pid='' begin_holder=''
    if [ -s "$STATE/lock.pid" ]; then read -r begin_pid begin_holder < "$STATE/lock.pid"; fi
    if [ "$begin_holder" != "$runid" ] || ! holder_alive "$begin_pid" "$runid"; then
        rm -rf "$rundir/staged-keys"
        set_status refused lock-lost "this run lost the host lock (its deployer was silent for longer than the lock holder waits); nothing was changed"
        return 1
    fi
    for begin_unit in $(switches_in_progress); do
        case "$begin_unit" in
            deploy-flake-"$runid"-*) ;;
            deploy-flake-*-activate.service | deploy-flake-*-boot.service)
                rm -rf "$rundir/staged-keys"
                set_status refused busy "another run is changing the host ($begin_unit); nothing was changed"
                return 1
                ;;
        esac
    done
}

# still_running WHEN [restore]: the host runs the run's system; otherwise
# another switch (an administrator's switch-to-configuration, an automatic
# upgrade) replaced it, and the run ends `superseded` WHEN: nothing of it is
# recorded, no boot entry written, no system rolled back. With restore
# (not confirmed yet), the keys written before the activation go with the
# run's system: they are put back as they were before the run, as in a
# rollback; a confirmed run's keys stay.
still_running() {
    still_now=$(readlink -f "$CURRENT" 2> /dev/null)
    [ "$still_now" = "$toplevel" ] && return 0
    rm -f "$rundir/toplevel" && rm -rf "$rundir/staged-keys"
    log "another switch replaced $toplevel $1: the host runs ${still_now:-nothing}"
    still_keys=''
    if [ "${2:-}" = restore ]; then
        if [ -e "$rundir/keys-written" ]; then still_keys="; the keys it wrote were put back as they were before it"; fi
        keys_restore
    fi
    set_status superseded superseded "another switch replaced the run's system $1: the host runs ${still_now:-nothing}; no boot entry was written$still_keys"
    return 1
}

# activation_ended RC: what the exit status RC of `switch-to-configuration
# test` means. Returns 0 when the new system runs and awaits its
# confirmation, 1 when the run ended here (refused, or rolled back).
activation_ended() {
    ended_rc=$1
    case "$ended_rc" in
        0) ;;
        4)
            ended_new=$(new_failed)
            if [ -n "$ended_new" ]; then
                roll_back activation-failed "switch-to-configuration test exited with 4; failed units: $ended_new"
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
        *) roll_back activation-failed "switch-to-configuration test exited with $ended_rc"; return 1 ;;
    esac
    return 0
}

# await_confirmation: wait for the deployer's confirmation; $await_cause
# and $await_reason say why the wait ended without it (both empty: confirmed).
await_confirmation() {
    # The window measures the deployer's liveness, not its speed: each of
    # its heartbeats (through the lock holder, `alive`) restarts it, so a
    # slow, busy deployer is waited for, and one that died or lost the host
    # is not: the host goes back WINDOW_SECS after its last sign of life
    # (and in any case HARD_SECS after the activation).
    # The deployer's confirmation and abort wake this wait (wake_all).
    uptime_now
    await_since=$now
    await_hard=$((now + hard_secs))
    nap_init bounded
    await_next=0 await_cause='' await_reason=''
    while [ ! -e "$rundir/confirmed" ]; do
        if [ -e "$rundir/abort" ]; then
            await_cause=$(abort_cause) await_reason="not confirmed: $(abort_text)"
            break
        fi
        # Once a second: the deadlines.
        if [ "$waited" -ge "$await_next" ]; then
            await_next=$((waited + 10))
            uptime_now
            await_beat=''
            if [ -e "$rundir/alive" ]; then read -r await_beat < "$rundir/alive"; fi
            case "$await_beat" in
                '' | *[!0-9]*) ;;
                *) if [ "$await_beat" -gt "$await_since" ]; then await_since=$await_beat; fi ;;
            esac
            if [ $((now - await_since)) -ge "$window_secs" ]; then
                await_cause=not-confirmed await_reason="no confirmation within ${window_secs}s of the deployer's last sign of life"
                break
            fi
            if [ "$now" -ge "$await_hard" ]; then
                await_cause=not-confirmed await_reason="no confirmation within ${hard_secs}s"
                break
            fi
        fi
        nap
    done
    nap_done
}

activate() {
    stc_env "$@"
    begin || return 0
    activation_start || return 0
    # shellcheck disable=SC2086 # allow-listed words
    run_bounded "$activate_secs" 1 env $stc_env "$toplevel/bin/switch-to-configuration" test
    activation_ended "$?" || return 0
    keys_own
    set_status awaiting-confirmation
    await_confirmation
    if [ -n "$await_cause" ]; then
        roll_back "$await_cause" "$await_reason"
        return
    fi
    activation_confirmed || return 0
    # Only a confirmed system becomes the boot entry; the agent writes it
    # at once, whether or not the deployer is still there to see it.
    if [ "$then_boot" = 1 ]; then
        still_running "before its boot entry was written" || return 0
        boot "$@"
    fi
}

# activation_start: what a rollback needs (the previous system, in
# $previous and the run's `previous`, the units failed before), then the
# pre-activation keys; 1 when the run ended here (refused).
activation_start() {
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
        return 1
    fi
}

# activation_confirmed: the confirmation recorded, after the
# post-activation keys (one that cannot be written takes the host back,
# with the keys it had); 1 when the run ended here.
activation_confirmed() {
    still_running "before the confirmation was recorded" restore || return 1
    if ! keys_install post; then
        roll_back keys "a post-activation key could not be written (see the log)"
        return 1
    fi
    keys_drop
    record confirmed "$toplevel"
    set_status confirmed
    log "confirmed"
}
