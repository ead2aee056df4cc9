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
#   failed-before  the units that had failed before the activation
#   log        everything switch-to-configuration printed
#   confirmed  created by the deployer over a fresh ssh login
#   abort      created by the deployer to stop the activation or refuse
#              the confirmation: one line "<cause> <reason>"
#   alive      touched at every heartbeat of the deployer (through the lock)
#   toplevel   GC root of the run's system until the system profile holds it
#   origin     who runs the deploy, from which flake ("<key> <value>" lines)
#   output.<pid>   a FIFO: what an activation prints, on its way to the log
#   exit-status    the exit status of the last command run for the system
# A run only ever looks at its own RUNDIR, so nothing left by an earlier
# run can confirm a later one. What outlives a reboot is kept root-only in
# /var/lib/deploy-flake: which systems were confirmed on this host
# (confirmed/<name>), whose boot entry was written (booted/<name>), and the
# last deploy (last).
#
#   agent.sh activate RUNDIR TOPLEVEL ACTIVATE_SECS CONFIRM_SECS MAGIC_ROLLBACK(1|0) THEN_BOOT(1|0) [ENV...]
#                                 (THEN_BOOT: once confirmed, go on as `boot`)
#   agent.sh boot RUNDIR TOPLEVEL [ENV...]
#   agent.sh check TOPLEVEL SECS SELFCHECK|"" [ENV...]   (SELFCHECK, then
#                                 switch-to-configuration check)
#   agent.sh watch RUNDIR SKIP_LINES [STATE [HEALTH_SECS]]   (also keeps waiting while
#                                 in STATE, "-" for none; with HEALTH_SECS, a watch
#                                 that ends in awaiting-confirmation answers `health`
#                                 too, its lines as "deploy-flake-health RUNID <line>")
#   agent.sh launch RUNDIR SKIP_LINES STATE HEALTH_SECS CMD...  (CMD starts an action
#                                 (its systemd-run); once it did, says
#                                 "deploy-flake-delivered" and watches as `watch`
#                                 does, "" for no HEALTH_SECS)
#   agent.sh probe RUNDIR         (did an action of the run start?)
#   agent.sh confirm RUNDIR [SKIP_LINES]  (run over a fresh login: confirms the
#                                 activation; with SKIP_LINES, says
#                                 "deploy-flake-delivered", then watches as `watch
#                                 RUNDIR SKIP_LINES awaiting-confirmation` does)
#   agent.sh abort RUNDIR         (stdin: "<cause> <reason>"; stop the activation
#                                  or refuse the confirmation)
#   agent.sh hold INFO BEAT_SECS RUNDIR [HEALTH_SECS]  (run under flock: holds the
#                                  host lock while a line arrives on stdin at least
#                                  every BEAT_SECS, each touching RUNDIR/alive; says
#                                  "deploy-flake-locked" once it holds it, after
#                                  the switches going on, the host's Nix
#                                  ("deploy-flake-nix <nix --version>") and
#                                  what `health HEALTH_SECS` says when asked)
#   agent.sh health SECS [RUNDIR] (system state, failed units, those failed before)
#   agent.sh facts TOPLEVEL [SELFCHECK]   (what the deployer needs to decide)
#   agent.sh status               (what the host runs, boots, lacks; read-only)
#   agent.sh diff TOPLEVEL        (what activating TOPLEVEL would change; read-only)
#
# ENV: NIXOS_NO_CHECK=1 and NIXOS_INSTALL_BOOTLOADER=1, passed on to
# switch-to-configuration (a transient unit does not inherit them).
#
# Answers meant for the deployer are lines "deploy-flake-<what> <value>"; the
# final status of `watch` is printed as "deploy-flake-status RUNID STATE REASON".

set -u
PATH=/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:/run/wrappers/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 077
cd /

STATE=/run/deploy-flake
RECORDS=/var/lib/deploy-flake
PROFILE=/nix/var/nix/profiles/system

set_status() {
    printf '%s\n' "$*" > "$rundir/status.tmp" && mv -f "$rundir/status.tmp" "$rundir/status"
    case "$1" in
        booted) remember deployed ;;
        failed) remember unconfirmed ;;
        confirmed | rolled-back | rollback-failed | refused | boot-failed) remember "$1" ;;
    esac
    wake_all
}

# remember OUTCOME: the last deploy to this host, for `deploy-flake status`
# (root-only, across reboots): its run, when, how it ended, its system, and
# who ran it from which flake (the run's origin).
# (These run on the way from one state to the next: the shell's own
# commands where they do, a process only where they must.)
remember() {
    [ -d "$RECORDS" ] || mkdir -p "$RECORDS" || return
    {
        printf 'run %s\nwhen %s\noutcome %s\nsystem %s\n' "${rundir##*/}" "${stamp:-$(date +%s)}" "$1" "${toplevel:-}"
        if [ -e "$rundir/origin" ]; then
            while IFS= read -r line; do printf '%s\n' "$line"; done < "$rundir/origin"
        fi
    } > "$RECORDS/last.tmp" && mv -f "$RECORDS/last.tmp" "$RECORDS/last"
    stamp=''
}

log() {
    printf 'deploy-flake: %s\n' "$*" >> "$rundir/log"
}

# cap_lines: stdin to stdout line by line, each line as it comes, cut at
# LINE_MAX bytes and marked: one endless line (a binary blob) costs the
# log, a watch and the deployer no more than that. coreutils' cut holds
# at most a line's first LINE_MAX + 1 bytes; stdbuf makes it pass each
# line on at once (without stdbuf, it passes them on in blocks).
LINE_MAX=65536
cap_lines() {
    LC_ALL=C
    export LC_ALL
    if command -v stdbuf > /dev/null 2>&1; then
        stdbuf -oL cut -b "1-$((LINE_MAX + 1))"
    else
        cut -b "1-$((LINE_MAX + 1))"
    fi | while IFS= read -r line || [ -n "$line" ]; do
        if [ "${#line}" -gt "$LINE_MAX" ]; then
            printf '%s [truncated at %s bytes]\n' "${line%?}" "$LINE_MAX"
        else
            printf '%s\n' "$line"
        fi
    done
}

# system CMD...: run CMD as nixos-rebuild runs what the system brings
# (switch-to-configuration, the bootloader, its checks): under umask 022,
# stdin closed, stderr with stdout. Its exit status goes to $sysrc (the
# agent's own files stay under its umask 077).
system() {
    (umask 022 && exec "$@") 2>&1 < /dev/null
    echo "$?" > "$sysrc"
}

# stc_env WORD...: the environment for switch-to-configuration, from an
# allow-list; sets $stc_env (words without spaces, safe unquoted).
stc_env() {
    stc_env=
    for word in "$@"; do
        case "$word" in
            NIXOS_NO_CHECK=1 | NIXOS_INSTALL_BOOTLOADER=1) stc_env="$stc_env $word" ;;
            *) echo "deploy-flake agent: refusing environment '$word'" >&2; exit 2 ;;
        esac
    done
}

# pause: one step of a wait. 0.2 s steps for the first 5 s, 1 s steps
# after: a short wait is noticed at once, a long one costs its host next to
# nothing. Adds the step to $waited (tenths of a second).
pause() {
    if [ "$waited" -lt 50 ]; then
        sleep 0.2
        waited=$((waited + 2))
    else
        sleep 1
        waited=$((waited + 10))
    fi
}

# Waiting for what another process does (the deployer's confirmation or
# abort, a state change of the agent) is not polled: the waiter naps on a
# FIFO of its own in the run directory (wake.<pid>), and whoever makes the
# change writes a line to every waiter's FIFO (wake_all), so the change is
# seen the moment it is made.
#   nap_init [bounded]; while ...; do ...; nap; done; nap_done
# After each nap, $waited is the time since nap_init (tenths of a second).
# A ticker beside the waiter writes that time at the pace of `pause`. With
# `bounded`, no ticker: each nap is a read that `timeout` ends after a
# second, so a wait whose deadline matters (the dead-man window) never
# depends on another process staying alive; a wake still ends it at once.
nap_init() {
    waited=0 ticker='' napfifo="$rundir/wake.$$" bounded=${1:-}
    # (A FIFO of a process that had this pid and was killed may be there.)
    mkfifo -m 600 "$napfifo" 2> /dev/null ||
        { rm -f "$napfifo" && mkfifo -m 600 "$napfifo" 2> /dev/null; } || { napfifo=''; return 0; }
    exec 3<> "$napfifo"
    [ -z "$bounded" ] || return 0
    napper=$$
    (
        while pause; do
            kill -0 "$napper" 2> /dev/null || exit 0
            echo "$waited" || exit 0
        done
    ) >&3 2> /dev/null < /dev/null &
    ticker=$!
}

nap() {
    if [ -z "$napfifo" ]; then
        pause
        return
    fi
    if [ -n "$bounded" ]; then
        # Woken early, this counts a whole second: deadlines are checked
        # against the clock, $waited only paces the checks.
        timeout 1 head -n 1 <&3 > /dev/null 2>&1
        waited=$((waited + 10))
        return
    fi
    read -r line <&3
    case "$line" in
        *[!0-9]* | '') ;;
        *) waited=$line ;;
    esac
}

nap_done() {
    [ -n "$napfifo" ] || return 0
    if [ -n "$ticker" ]; then kill "$ticker" 2> /dev/null; fi
    exec 3<&-
    rm -f "$napfifo"
    napfifo=''
}

# Wake every waiter of the run (a FIFO opened read-write never blocks,
# whether or not its waiter is still there).
wake_all() {
    for fifo in "$rundir"/wake.*; do
        if [ -p "$fifo" ]; then echo w 1<> "$fifo"; fi
    done 2> /dev/null
}

# run_bounded SECS ABORTABLE CMD...: run CMD in its own process group,
# under umask 022 (as `system`), its output appended to the log through
# cap_lines. Returns its status, 124 on timeout, and 125 when ABORTABLE is
# 1 and the deployer asked to abort. This shell only waits for CMD (then
# for the last of its output), so its end is seen at once; a guard beside
# it ends CMD on timeout or abort. Should the guard be killed on its own,
# coreutils' `timeout` (the group's leader) still ends CMD a few seconds
# later.
run_bounded() {
    secs=$1 abortable=$2
    shift 2
    rm -f "$rundir/ended-by"
    out="$rundir/output.$$"
    rm -f "$out"
    if mkfifo -m 600 "$out"; then
        cap_lines < "$out" >> "$rundir/log" 2>&1 &
        capper=$!
    else
        out="$rundir/log" capper=''
    fi
    (umask 022 && exec setsid timeout -k 5 $((secs + 5)) "$@") >> "$out" 2>&1 < /dev/null &
    child=$!
    guard "$child" "$secs" "$abortable" "$capper" < /dev/null > /dev/null 2>&1 &
    guard_pid=$!
    wait "$child"
    rc=$?
    # Every line CMD printed is in the log before its end is told.
    if [ -n "$capper" ]; then wait "$capper"; fi
    rm -f "$rundir/output.$$"
    kill "$guard_pid" 2> /dev/null
    wait "$guard_pid" 2> /dev/null
    if [ -s "$rundir/ended-by" ]; then
        read -r rc < "$rundir/ended-by"
    elif [ "$rc" = 125 ]; then
        # (`timeout` itself failed: not the deployer's abort.)
        rc=126
    fi
    rm -f "$rundir/ended-by"
    return "$rc"
}

# guard PID SECS ABORTABLE [CAPPER]: end the process group PID after SECS
# (124), or when ABORTABLE is 1 and the deployer asks to abort (125); the
# reason goes to $rundir/ended-by. Once PID has ended, CAPPER (what passes
# its output on) gets 5 s to see the end of it: a process the activation
# left behind with its output open is not waited for.
guard() {
    child=$1 limit=$(($2 * 10)) abortable=$3 capper=${4:-}
    waited=0
    while kill -0 "$child" 2> /dev/null; do
        why=
        if [ "$abortable" = 1 ] && [ -e "$rundir/abort" ]; then
            why=125
        elif [ "$waited" -ge "$limit" ]; then
            why=124
        fi
        if [ -n "$why" ]; then
            echo "$why" > "$rundir/ended-by"
            kill -TERM -"$child" 2> /dev/null
            n=0
            while kill -0 "$child" 2> /dev/null && [ "$n" -lt 25 ]; do
                sleep 0.2
                n=$((n + 1))
            done
            kill -KILL -"$child" 2> /dev/null
            break
        fi
        pause
    done
    [ -n "$capper" ] || return 0
    n=0
    while kill -0 "$capper" 2> /dev/null; do
        if [ "$n" -ge 25 ]; then
            kill "$capper" 2> /dev/null
            return 0
        fi
        sleep 0.2
        n=$((n + 1))
    done
}

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

# record KIND TOPLEVEL: remember across reboots that this system was
# confirmed (or got its boot entry) on this host. Records of systems no
# longer in the store are dropped.
# Sets $stamp (the time), which the state change that follows records too.
record() {
    [ -d "$RECORDS/$1" ] || mkdir -p "$RECORDS/$1" || return
    for old in "$RECORDS/$1"/*; do
        [ -e "$old" ] && [ ! -e "/nix/store/${old##*/}" ] && rm -f "$old"
    done
    stamp=$(date +%s)
    printf '%s %s\n' "${rundir##*/}" "$stamp" > "$RECORDS/$1/${2##*/}"
}

recorded() {
    [ -e "$RECORDS/$1/${2##*/}" ]
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
        set_status failed "$cause" "$reason"
        return
    fi
    if [ -z "$previous" ] || [ ! -x "$previous/bin/switch-to-configuration" ]; then
        set_status rollback-failed "$cause" "$reason; no previous system to return to"
        return
    fi
    set_status rolling-back "$cause" "$reason"
    log "rolling back to $previous: $reason"
    # What failed under the abandoned system is not the previous system's
    # doing: clear it, so that what fails now is what the rollback left.
    for unit in $new; do systemctl reset-failed "$unit" 2> /dev/null; done
    # Returning to the system that ran a moment ago: its own pre-switch
    # checks must not refuse it, and nothing may stop it halfway (not the
    # deployer's abort, nor an activate timeout meant for the new system).
    rollback_secs=$((activate_secs > 300 ? activate_secs : 300))
    run_bounded "$rollback_secs" 0 env NIXOS_NO_CHECK=1 "$previous/bin/switch-to-configuration" test
    rc=$?
    now=$(readlink -f /run/current-system 2> /dev/null)
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

activate() {
    rundir=$1 toplevel=$2 activate_secs=$3 confirm_secs=$4 magic=$5 then_boot=$6
    shift 6
    stc_env "$@"
    previous=
    if [ -e /run/current-system ]; then
        previous=$(readlink -f /run/current-system)
    fi
    printf '%s\n' "$previous" > "$rundir/previous"
    failed_units > "$rundir/failed-before"
    set_status activating
    log "activating $toplevel (previous: ${previous:-none})"
    # shellcheck disable=SC2086 # allow-listed words
    run_bounded "$activate_secs" 1 env $stc_env "$toplevel/bin/switch-to-configuration" test
    rc=$?
    case "$rc" in
        0) ;;
        4)
            new=$(new_failed)
            if [ -n "$new" ]; then
                roll_back activation-failed "switch-to-configuration test exited with 4; failed units: $new"
                return
            fi
            log "switch-to-configuration test exited with 4 only for units that had failed before: $(cat "$rundir/failed-before")"
            ;;
        2) roll_back activation-script "the activation script failed (switch-to-configuration test exited with 2)"; return ;;
        11)
            rm -f "$rundir/toplevel"
            set_status refused busy "another switch-to-configuration holds its lock (nixos-rebuild or an automatic upgrade is switching this host); nothing was activated"
            return
            ;;
        100)
            rm -f "$rundir/toplevel"
            set_status refused reboot-required "the new system's init is incompatible with the running one (switch-to-configuration test exited with 100); nothing was activated"
            return
            ;;
        124) roll_back timeout "activation did not finish within ${activate_secs}s"; return ;;
        125) roll_back "$(abort_cause)" "activation aborted by the deployer: $(abort_text)"; return ;;
        *) roll_back activation-failed "switch-to-configuration test exited with $rc"; return ;;
    esac
    set_status awaiting-confirmation
    # The window measures the deployer's liveness, not its speed: each of
    # its heartbeats (through the lock holder, `alive`) restarts it, so a
    # slow, busy deployer is waited for, and one that died or lost the host
    # is not: the host goes back CONFIRM_SECS after its last sign of life
    # (and in any case LIMIT_SECS after the activation).
    # The deployer's confirmation and abort wake this wait (wake_all).
    since=$(date +%s)
    hard=$((since + confirm_secs + 600))
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
            now=$(date +%s)
            beat=$(stat -c %Y "$rundir/alive" 2> /dev/null || echo 0)
            [ "$beat" -gt "$since" ] && since=$beat
            if [ $((now - since)) -ge "$confirm_secs" ]; then
                cause=not-confirmed reason="no confirmation within ${confirm_secs}s of the deployer's last sign of life"
                break
            fi
            if [ "$now" -ge "$hard" ]; then
                cause=not-confirmed reason="no confirmation within $((confirm_secs + 600))s"
                break
            fi
        fi
        nap
    done
    nap_done
    if [ -n "$cause" ]; then
        roll_back "$cause" "$reason"
        return
    fi
    record confirmed "$toplevel"
    set_status confirmed
    log "confirmed"
    # Only a confirmed system becomes the boot entry; the agent writes it
    # at once, whether or not the deployer is still there to see it.
    if [ "$then_boot" = 1 ]; then boot "$rundir" "$toplevel" "$@"; fi
}

boot() {
    rundir=$1 toplevel=$2
    shift 2
    stc_env "$@"
    set_status booting
    before=$(readlink -f "$PROFILE" 2> /dev/null)
    # The newest generation is what every bootloader boots (systemd-boot
    # keeps only the newest ones), also for a return to an older system.
    sysrc="$rundir/exit-status"
    if [ "$before" != "$toplevel" ]; then
        system nix-env -p "$PROFILE" --set "$toplevel" | cap_lines >> "$rundir/log"
    fi
    if [ "$(readlink -f "$PROFILE")" != "$toplevel" ]; then
        set_status boot-failed boot-entry "the system profile could not be pointed at $toplevel; it still points at ${before:-nothing}"
        return
    fi
    logged=$(wc -l < "$rundir/log" 2> /dev/null || echo 0)
    # shellcheck disable=SC2086 # allow-listed words
    system env $stc_env "$toplevel/bin/switch-to-configuration" boot | cap_lines >> "$rundir/log"
    read -r rc < "$sysrc" || rc=1
    rm -f "$sysrc"
    # The system profile holds the system now.
    rm -f "$rundir/toplevel"
    if [ "$rc" = 0 ]; then
        record booted "$toplevel"
        set_status booted
        return
    fi
    if [ "$rc" = 1 ] && sed -n "$((logged + 1)),\$p" "$rundir/log" | grep -q "Pre-switch checks failed"; then
        # Refused before the bootloader was touched: put the profile back.
        if [ -n "$before" ] && [ "$before" != "$toplevel" ]; then
            system nix-env -p "$PROFILE" --rollback | cap_lines >> "$rundir/log"
        fi
        set_status boot-failed pre-switch-check "the pre-switch checks refused the boot entry; the system profile points at $(readlink -f "$PROFILE") again"
    elif [ "$rc" = 11 ]; then
        set_status boot-failed busy "another switch-to-configuration holds its lock; the system profile points at $toplevel, but its boot entry was not written"
    else
        set_status boot-failed boot-entry "switch-to-configuration boot exited with $rc: the system profile points at $toplevel, but the bootloader was not updated and may still boot the previous system"
    fi
}

# Runs `switch-to-configuration check`: the pre-switch checks and the
# switch inhibitors, before anything changes; after SELFCHECK, when given
# (a failing one ends it, its exit status said).
check() {
    toplevel=$1 secs=$2 selfcheck=$3
    shift 3
    stc_env "$@"
    sysrc="$STATE/.exit-status.$$"
    if [ -n "$selfcheck" ]; then
        out=$(system timeout "$secs" "$selfcheck" | cap_lines)
        read -r rc < "$sysrc" || rc=1
        if [ -n "$out" ]; then printf '%s\n' "$out"; fi
        echo "deploy-flake-self-check $rc"
        [ "$rc" = 0 ] || { rm -f "$sysrc"; return 0; }
    fi
    # shellcheck disable=SC2086 # allow-listed words
    out=$(system timeout "$secs" env $stc_env "$toplevel/bin/switch-to-configuration" check | cap_lines)
    read -r rc < "$sysrc" || rc=1
    rm -f "$sysrc"
    printf '%s\n' "$out"
    case "$rc" in
        0) verdict=ok ;;
        11) verdict=busy ;;
        124) verdict=timeout ;;
        *)
            case "$out" in
                *"Pre-switch checks failed"* | *"critical components"*) verdict=refused ;;
                *[Uu]sage:* | *"invalid action"*) verdict=unsupported ;;
                *) verdict=refused ;;
            esac
            ;;
    esac
    echo "deploy-flake-check $verdict"
}

# Is a unit of the run (activate or boot) still running?
unit_alive() {
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
    checked=0
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
        if [ -n "$transient" ] && [ $((waited - checked)) -ge 50 ]; then
            checked=$waited
            if ! unit_alive; then
                last=
                if [ -e "$rundir/status" ]; then read -r last _ < "$rundir/status"; fi
                if [ "$last" = "$state" ]; then
                    nap_done
                    say_previous
                    echo "deploy-flake-status $runid vanished lost the agent ended while ${state:-starting}: it was stopped or killed"
                    return
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
    if [ -e "$rundir/status" ] || unit_alive; then
        echo "deploy-flake-started yes"
    fi
}

# Switches that must not be disturbed: other runs' activations, and
# nixos-rebuild or an automatic upgrade switching this host. With cgroup v2,
# a service has a cgroup of its own exactly while it has processes: seen
# without asking systemd.
switches_in_progress() {
    slice=/sys/fs/cgroup/system.slice
    if [ -d "$slice" ]; then
        for unit in "$slice"/deploy-flake-*.service "$slice"/nixos-rebuild-switch-to-configuration.service \
            "$slice"/nixos-upgrade.service; do
            if [ -d "$unit" ]; then echo "deploy-flake-busy ${unit##*/}"; fi
        done
        return 0
    fi
    systemctl list-units --plain --no-legend --no-pager --state=active,activating,deactivating \
        'deploy-flake-*' nixos-rebuild-switch-to-configuration.service nixos-upgrade.service 2> /dev/null |
        awk '{print "deploy-flake-busy " $1}'
}

health() {
    secs=$1 rundir=${2:-}
    # One question to systemd when the system is up: its state and how
    # many units failed; their names only when some did.
    state='' nfailed=''
    for prop in $(systemctl show --property=SystemState --property=NFailedUnits 2> /dev/null); do
        case "$prop" in
            SystemState=*) state=${prop#*=} ;;
            NFailedUnits=*) nfailed=${prop#*=} ;;
        esac
    done
    case "$state" in
        initializing | starting | '')
            state=$(timeout "$secs" systemctl is-system-running --wait 2> /dev/null)
            if [ "$?" = 124 ]; then state="still-starting-after-${secs}s"; fi
            nfailed=''
            ;;
    esac
    echo "deploy-flake-state ${state:-unknown}"
    if [ "$nfailed" != 0 ]; then
        systemctl list-units --failed --plain --no-legend --no-pager 2> /dev/null | awk '{print "deploy-flake-failed " $1}'
    fi
    if [ -n "$rundir" ] && [ -e "$rundir/failed-before" ]; then
        tr ' ' '\n' < "$rundir/failed-before" | awk 'NF {print "deploy-flake-failed-already " $1}'
    fi
}

# reboot_for KEY SYSTEM: what differs between the booted system and SYSTEM
# that only a reboot brings in (kernel, initrd, kernel modules, init).
reboot_for() {
    [ -e /run/booted-system ] && [ -n "$2" ] || return 0
    for part in kernel initrd kernel-modules; do
        if [ "$(readlink -f "/run/booted-system/$part")" != "$(readlink -f "$2/$part")" ]; then
            echo "deploy-flake-$1 $part"
        fi
    done
    if [ "$(cat /run/booted-system/init-interface-version 2> /dev/null)" != "$(cat "$2/init-interface-version" 2> /dev/null)" ]; then
        echo "deploy-flake-$1 init"
    fi
}

facts() {
    toplevel=$1 selfcheck=${2:-pre-activate-safety-checks}
    profile=$(readlink -e "$PROFILE")
    echo "deploy-flake-current $(readlink -e /run/current-system)"
    echo "deploy-flake-profile $profile"
    echo "deploy-flake-booted-system $(readlink -e /run/booted-system)"
    if [ -x "$toplevel/bin/switch-to-configuration" ]; then echo "deploy-flake-switchable yes"; fi
    if [ -x "$toplevel/$selfcheck" ]; then echo "deploy-flake-selfcheck $toplevel/$selfcheck"; fi
    if [ -d /run/systemd/system ]; then echo "deploy-flake-systemd yes"; fi
    if recorded confirmed "$toplevel"; then echo "deploy-flake-confirmed-here yes"; fi
    if recorded booted "$toplevel"; then echo "deploy-flake-boot-written yes"; fi
    reboot_for reboot-new "$toplevel"
    reboot_for reboot-profile "$profile"
    switches_in_progress
}

status() {
    profile=$(readlink -e "$PROFILE")
    echo "deploy-flake-current $(readlink -e /run/current-system)"
    echo "deploy-flake-profile $profile"
    echo "deploy-flake-booted-system $(readlink -e /run/booted-system)"
    echo "deploy-flake-boot-id $(cat /proc/sys/kernel/random/boot_id)"
    echo "deploy-flake-state $(systemctl is-system-running 2> /dev/null)"
    systemctl list-units --failed --plain --no-legend --no-pager 2> /dev/null | awk '{print "deploy-flake-failed " $1}'
    reboot_for reboot-profile "$profile"
    if [ -s "$STATE/lock.info" ]; then echo "deploy-flake-lock $(cat "$STATE/lock.info")"; fi
    if [ -e "$RECORDS/last" ]; then sed 's/^/deploy-flake-last-/' "$RECORDS/last"; fi
    switches_in_progress
}

diff() {
    toplevel=$1
    current=$(readlink -e /run/current-system)
    if [ -n "$current" ]; then
        # Nix's own warnings go to stderr, which the deployer shows.
        nix --extra-experimental-features nix-command store diff-closures "$current" "$toplevel" |
            sed 's/^/deploy-flake-package /'
        nix --extra-experimental-features nix-command path-info --closure-size "$current" "$toplevel" |
            awk '{print "deploy-flake-closure " $1 " " $2}'
    fi
    "$toplevel/bin/switch-to-configuration" dry-activate 2>&1 < /dev/null |
        sed -n 's/^would \(stop\|restart\|start\|reload\) the following units: /deploy-flake-units \1 /p'
    echo "deploy-flake-booted-system $(readlink -e /run/booted-system)"
    reboot_for reboot-new "$toplevel"
}

# The Nix that commands run here ("deploy-flake-nix <nix --version>"), for
# the flags the deployer gives them. Asked again only when the binary is
# another (device, inode, time, size): a lock costs one stat, not a Nix.
nix_version() {
    bin=$(command -v nix) || return 0
    key=$(stat -L -c '%d:%i:%Y:%s' "$bin" 2> /dev/null) || return 0
    seen='' said=''
    if [ -r "$STATE/nix-version" ]; then { read -r seen && read -r said; } < "$STATE/nix-version"; fi
    if [ "$seen" != "$key" ]; then
        said=$(nix --version 2> /dev/null | head -n 1)
        printf '%s\n%s\n' "$key" "$said" > "$STATE/nix-version.tmp" &&
            mv -f "$STATE/nix-version.tmp" "$STATE/nix-version"
    fi
    echo "deploy-flake-nix $said"
}

hold() {
    info=$1 beat=$2 rundir=$3 preflight=${4:-}
    printf '%s\n' "$info" > "$STATE/lock.info"
    switches_in_progress
    nix_version
    # The deployer's preflight, answered with the lock.
    if [ -n "$preflight" ]; then health "$preflight" "$rundir"; fi
    echo "deploy-flake-locked"
    # Each line on stdin is a heartbeat. Without one for BEAT_SECS the
    # deployer is taken for lost (a network partition leaves no EOF) and
    # the lock is released: flock -o holds it only while this shell lives.
    : > "$STATE/lock.beat"
    main=$$
    (
        while sleep 2; do
            kill -0 "$main" 2> /dev/null || exit 0
            last=$(stat -c %Y "$STATE/lock.beat" 2> /dev/null || echo 0)
            if [ $(($(date +%s) - last)) -gt "$beat" ]; then
                rm -f "$STATE/lock.info"
                kill -KILL "$main"
                exit 0
            fi
        done
    ) < /dev/null > /dev/null 2>&1 &
    watchdog=$!
    while IFS= read -r _; do
        : > "$STATE/lock.beat"
        : > "$rundir/alive"
    done
    kill "$watchdog" 2> /dev/null
    rm -f "$STATE/lock.info"
}

cmd=$1
shift
case "$cmd" in
    activate) activate "$@" ;;
    boot) boot "$@" ;;
    check) check "$@" ;;
    watch) watch "$@" ;;
    launch) launch "$@" ;;
    probe) probe "$@" ;;
    confirm) confirm "$@" ;;
    abort) abort "$@" ;;
    hold) hold "$@" ;;
    health) health "$@" ;;
    facts) facts "$@" ;;
    status) status "$@" ;;
    diff) diff "$@" ;;
    *) echo "deploy-flake agent: unknown command $cmd" >&2; exit 2 ;;
esac
exit 0
