# deploy-flake on-target agent: POSIX sh (run by /bin/sh: dash, or bash
# as sh), with GNU coreutils, util-linux (flock, setsid) and systemd.
# shellcheck shell=sh
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
#   alive      the time (/proc/uptime) of the deployer's last heartbeat,
#              written by its lock holder
#   pid        the agent of the run's action (activate or boot)
#   toplevel   GC root of the run's system until the system profile holds it
#   origin     who runs the deploy, from which flake ("<key> <value>" lines)
#   output.<pid>   a FIFO: what an activation prints, on its way to the log
#   exit-status    the exit status of the last command run for the system
#   staged-keys  the keys the deployer sent (N: content, N.meta: upload time,
#              directory, name, user, group, mode), until written
#   keys-written  what this run wrote: "had FILE" (its previous content is
#              kept as DIR/.deploy-flake-previous/RUNID/NAME) or "new FILE"
#   keys-keep  the deployer drops the previous keys itself (after a soak)
#   keys-adopted  the run (a revert) that put back the keys of this RUNDIR
# A run only ever looks at its own RUNDIR, so nothing left by an earlier
# run can confirm a later one. What outlives a reboot is kept root-only in
# /var/lib/deploy-flake: which systems were confirmed on this host
# (confirmed/<name>), whose boot entry was written (booted/<name>), and the
# last deploy (last).
#
#   agent.sh activate RUNDIR TOPLEVEL ACTIVATE_SECS WINDOW_SECS HARD_SECS ROLLBACK_SECS GRACE_SECS MAGIC_ROLLBACK(1|0) THEN_BOOT(1|0) [ENV...]
#                                 (WINDOW_SECS: wait that long for the confirmation
#                                 after the deployer's last sign of life, HARD_SECS
#                                 after the activation at most; ROLLBACK_SECS: the
#                                 bound of a rollback; GRACE_SECS: between a bound's
#                                 TERM and its KILL; THEN_BOOT: once confirmed, go
#                                 on as `boot`)
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
#                                  every BEAT_SECS, each written to RUNDIR/alive; says
#                                  "deploy-flake-locked" once it holds it, after
#                                  the switches going on, the host's Nix
#                                  ("deploy-flake-nix <nix --version>") and
#                                  what `health HEALTH_SECS` says when asked)
#   agent.sh displace RUNID CMD...  (ends a holder of the host lock of the same
#                                  run, whose deployer lost its connection to it,
#                                  then execs CMD: the run takes its lock back)
#   agent.sh health SECS [RUNDIR] (system state, failed units, those failed before)
#   agent.sh look SECS [RUNDIR]   (health, and what the host runs; read-only)
#   agent.sh facts TOPLEVEL [SELFCHECK]   (what the deployer needs to decide)
#   agent.sh keys-stage RUNDIR [keep]  (stdin: the keys; staged for `activate`,
#                                 which writes pre-activation keys before the switch
#                                 and post-activation keys once confirmed; with keep,
#                                 the previous keys stay until keys-drop)
#   agent.sh keys-upload RUNDIR   (stdin: the keys; written now, all of them)
#   agent.sh keys-discard RUNDIR  (the staged keys are not needed: removed)
#   agent.sh keys-drop RUNDIR     (the previous keys of a run are not needed)
#   agent.sh keys-adopt RUNDIR FROM  (a revert: stage the keys as they were
#                                 before run FROM, to be written by `activate`)
#   agent.sh status               (what the host runs, boots, lacks; read-only)
#   agent.sh diff TOPLEVEL        (what activating TOPLEVEL would change; read-only)
#
# ENV: NIXOS_NO_CHECK=1 and NIXOS_INSTALL_BOOTLOADER=1, passed on to
# switch-to-configuration (a transient unit does not inherit them).
#
# Answers meant for the deployer are lines "deploy-flake-<what> <value>"; the
# final status of `watch` is printed as "deploy-flake-status RUNID STATE REASON".
#
# Every deadline is measured on the monotonic clock (/proc/uptime: seconds
# since boot, suspend included), never with `date` or file times, which an
# administrator, chrony or a resumed VM may step.

set -u
# PATH and the paths below are set here, once each, and never read from the
# environment: whatever environment reaches the agent cannot move them.
# (The agent tier, tests/agent_tier.rs, runs a copy of this text with just
# these lines pointing into a temporary directory.)
PATH=/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:/run/wrappers/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 077
cd /

STATE=/run/deploy-flake
RECORDS=/var/lib/deploy-flake
PROFILE=/nix/var/nix/profiles/system
CURRENT=/run/current-system
SLICE=/sys/fs/cgroup/system.slice
# /run is memory: the directories of the newest RUNS_KEPT runs are kept
# (older ones go when a run takes the host lock, and so does the log of
# one that succeeded), and an activation's output is kept up to LOG_CAP
# bytes of its log.
RUNS_KEPT=5
LOG_CAP=1048576

set_status() {
    intended="$*"
    if ! { printf '%s\n' "$*" > "$rundir/status.tmp" && mv -f "$rundir/status.tmp" "$rundir/status"; } 2> /dev/null; then
        status_unwritten "$1"
    fi
    case "$1" in
        booted) remember deployed ;;
        failed) remember unconfirmed ;;
        confirmed | rolled-back | rollback-failed | refused | boot-failed | superseded) remember "$1" ;;
    esac
    wake_all
}

# uptime_now: $now, whole seconds on the monotonic clock (no process).
uptime_now() {
    read -r now _ < /proc/uptime
    now=${now%.*}
}

# A state that cannot be recorded (/run full, the run's directory gone)
# is fatal: the deployer follows the recorded state, which the agent is no
# longer in. Said on stderr (the unit's journal, where a watch looks when
# the agent is gone); an activation not yet confirmed is undone first,
# and a rollback under way goes on to its end.
status_unwritten() {
    [ -z "${unwritten:-}" ] || return 0
    unwritten=$1
    agent_says "could not record the state '$1' in $rundir/status ($(run_space) KiB free in /run); stopping"
    case "$1" in
        rolling-back | rolled-back | rollback-failed) return 0 ;;
        awaiting-confirmation)
            roll_back not-confirmed "the agent could not record its state"
            agent_says "$intended; it runs $(readlink -f "$CURRENT")"
            ;;
    esac
    exit 3
}

# What the agent says for the journal (its unit's stderr).
agent_says() {
    echo "deploy-flake agent: $*" >&2
}

# The KiB free in /run.
run_space() {
    df -Pk /run 2> /dev/null | awk 'NR == 2 {print $4}'
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
    { printf 'deploy-flake: %s\n' "$*" >> "$rundir/log"; } 2> /dev/null
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

# Wake every waiter of the run, never waiting on one: the line is written
# without blocking (dd, O_NONBLOCK), so a FIFO whose waiter is gone (no
# reader) or stopped (its buffer full) is passed over; a waiter with a full
# buffer has wakes enough to read.
wake_all() {
    for fifo in "$rundir"/wake.*; do
        if [ -p "$fifo" ]; then
            echo w | dd of="$fifo" oflag=nonblock status=none 2> /dev/null
        fi
    done
}

# run_bounded SECS ABORTABLE CMD...: run CMD in its own process group,
# under umask 022 (as `system`), its output appended to the log through
# cap_lines. Returns its status, 124 on timeout, and 125 when ABORTABLE is
# 1 and the deployer asked to abort. This shell only waits for CMD (then
# for the last of its output), so its end is seen at once; a guard beside
# it ends CMD on timeout or abort (TERM, then KILL $grace_secs later).
# Should the guard be killed on its own, coreutils' `timeout` (the group's
# leader) still ends CMD $grace_secs later. CMD ends at most 2 x
# $grace_secs after SECS.
run_bounded() {
    secs=$1 abortable=$2
    shift 2
    rm -f "$rundir/ended-by"
    out="$rundir/output.$$"
    rm -f "$out"
    # (printf: a failed redirection of `:` would end the shell.)
    if ! { printf '' >> "$rundir/log"; } 2> /dev/null; then
        # A log that cannot be written: the command runs all the same.
        out=/dev/null capper=''
    elif mkfifo -m 600 "$out"; then
        used=$(wc -c < "$rundir/log" 2> /dev/null || echo 0)
        cap_lines < "$out" | cap_copy $((LOG_CAP > used ? LOG_CAP - used : 0)) >> "$rundir/log" 2>&1 &
        capper=$!
    else
        out="$rundir/log" capper=''
    fi
    (umask 022 && exec setsid timeout -k "$grace_secs" $((secs + grace_secs)) "$@") >> "$out" 2>&1 < /dev/null &
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

# cap_copy ROOM: stdin to stdout, each line as it comes (the log follows
# the output live: the shell's own read and printf buffer nothing), up to
# ROOM bytes (the log of a run holds at most LOG_CAP); then a line that
# says so, and the rest read away (the writer never blocks on it, nor dies
# of a closed pipe).
cap_copy() {
    room=$1 line=''
    while IFS= read -r line; do
        if [ "$room" -le 0 ]; then
            printf 'deploy-flake: the log is capped at %s bytes; the rest of this output is dropped\n' "$LOG_CAP"
            cat > /dev/null
            return 0
        fi
        if [ "${#line}" -ge "$room" ]; then line=$(printf "%.$((room - 1))s" "$line"); fi
        printf '%s\n' "$line"
        room=$((room - ${#line} - 1))
    done
    # (A last line without its newline.)
    if [ -n "$line" ]; then printf '%s' "$line"; fi
}

# guard PID SECS ABORTABLE [CAPPER]: end the process group PID after SECS
# (124), or when ABORTABLE is 1 and the deployer asks to abort (125); the
# reason goes to $rundir/ended-by. Once PID has ended, CAPPER (what passes
# its output on) gets $grace_secs to see the end of it: a process the
# activation left behind with its output open is not waited for.
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
            while kill -0 "$child" 2> /dev/null && [ "$n" -lt $((grace_secs * 5)) ]; do
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
        if [ "$n" -ge $((grace_secs * 5)) ]; then
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

# holder_alive PID RUNID: is PID the lock holder of run RUNID?
holder_alive() {
    [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" 2> /dev/null |
        grep -qF " hold " && tr '\0' ' ' < "/proc/$1/cmdline" 2> /dev/null | grep -qF "/runs/$2 "
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

# The system the newest generation of the system profile points at: what
# a bootloader that keeps only the newest entries boots.
newest_generation() {
    newest='' highest=0
    for link in "$PROFILE"-*-link; do
        number=${link#"$PROFILE"-}
        number=${number%-link}
        case "$number" in '' | *[!0-9]*) continue ;; esac
        if [ "$number" -gt "$highest" ]; then highest=$number newest=$link; fi
    done
    if [ -n "$newest" ]; then readlink -f "$newest"; fi
}

# The system the bootloader's default entry boots, where the bootloader
# says it (systemd-boot's loader.conf and its entry: a `system` line, or
# the `init=` of its options); nothing where it does not.
default_entry() {
    for conf in /boot/loader/loader.conf /boot/efi/loader/loader.conf /efi/loader/loader.conf; do
        [ -r "$conf" ] || continue
        entry=$(sed -n 's/^default[[:space:]][[:space:]]*//p' "$conf" | tail -n 1)
        case "$entry" in '' | */* | *[*?@]*) return 0 ;; esac
        file=${conf%/loader.conf}/entries/$entry
        [ -r "$file" ] || return 0
        sys=$(sed -n 's/^system[[:space:]][[:space:]]*//p' "$file" | tail -n 1)
        if [ -z "$sys" ]; then
            sys=$(sed -n 's|^options.*init=\(/nix/store/[^/ ]*\)/init.*|\1|p' "$file" | tail -n 1)
        fi
        if [ -n "$sys" ]; then printf '%s\n' "$sys"; fi
        return 0
    done
}

boot() {
    rundir=$1 toplevel=$2
    shift 2
    stc_env "$@"
    set_status booting
    before=$(readlink -f "$PROFILE" 2> /dev/null)
    # The newest generation is what every bootloader boots (systemd-boot
    # keeps only the newest ones, and its default is the one of the system
    # only among those). Unless it is the run's system already, the profile
    # gets a new generation of it, also when an older generation (switched
    # to, or rolled back to) points at it.
    sysrc="$rundir/exit-status" moved=''
    if [ "$(newest_generation)" != "$toplevel" ]; then
        system nix-env -p "$PROFILE" --set "$toplevel" | cap_lines >> "$rundir/log"
        moved=1
    fi
    if [ "$(readlink -f "$PROFILE")" != "$toplevel" ] || [ "$(newest_generation)" != "$toplevel" ]; then
        set_status boot-failed boot-entry "the system profile could not be given a newest generation of $toplevel; it points at ${before:-nothing}"
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
        entry=$(default_entry)
        if [ -n "$entry" ] && [ "$entry" != "$toplevel" ]; then
            set_status boot-failed boot-entry "switch-to-configuration boot succeeded, but the bootloader's default entry boots $entry, not $toplevel"
            return
        fi
        record booted "$toplevel"
        set_status booted
        return
    fi
    if [ "$rc" = 1 ] && sed -n "$((logged + 1)),\$p" "$rundir/log" | grep -q "Pre-switch checks failed"; then
        # Refused before the bootloader was touched: the profile points at
        # exactly what it did before (not at "the generation before").
        if [ -n "$moved" ] && [ -n "$before" ]; then
            system nix-env -p "$PROFILE" --set "$before" | cap_lines >> "$rundir/log"
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
        echo "deploy-flake-self-check-exit $rc"
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

# prune_runs OWN: of the runs that are over, those beyond the newest
# RUNS_KEPT (OWN counted) lose their directory, and the others their log
# when they succeeded. Never OWN, a run whose agent is at work, or the run
# that holds the host lock (its id as `hold` wrote it in lock.pid; the
# owner's words in lock.info are only shown). (Run ids begin with the
# time: newest first is the reverse order of their names.)
prune_runs() {
    own=$1 kept=1 holder=''
    if [ -s "$STATE/lock.pid" ]; then read -r _ holder < "$STATE/lock.pid"; fi
    set --
    for dir in "$STATE"/runs/*; do
        if [ -d "$dir" ]; then set -- "${dir##*/}" "$@"; fi
    done
    for id in "$@"; do
        dir=$STATE/runs/$id
        if [ "$dir" = "$own" ] || [ "$id" = "$holder" ] || run_at_work "$id"; then continue; fi
        if [ "$kept" -ge "$RUNS_KEPT" ]; then
            rm -rf "$dir"
            continue
        fi
        kept=$((kept + 1))
        read -r state _ < "$dir/status" 2> /dev/null
        case "${state:-}" in booted | confirmed) rm -f "$dir/log" ;; esac
        state=''
    done
}

# Is an action (activate, boot) of the run RUNID at work?
run_at_work() {
    slice=$SLICE
    if [ -d "$slice" ]; then
        [ -d "$slice/deploy-flake-$1-activate.service" ] || [ -d "$slice/deploy-flake-$1-boot.service" ]
    else
        systemctl is-active --quiet "deploy-flake-$1-activate.service" "deploy-flake-$1-boot.service" 2> /dev/null
    fi
}

# Switches that must not be disturbed: other runs' activations, and
# nixos-rebuild or an automatic upgrade switching this host. With cgroup v2,
# a service has a cgroup of its own exactly while it has processes: seen
# without asking systemd.
switches_in_progress() {
    slice=$SLICE
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
    # many units failed; their names only when some did. A systemd that
    # does not answer for a moment (busy, or re-executing itself) is asked
    # again, within SECS (only where systemd runs the host).
    uptime_now
    until=$((now + secs))
    while :; do
        state='' nfailed=''
        for prop in $(systemctl show --property=SystemState --property=NFailedUnits 2> /dev/null); do
            case "$prop" in
                SystemState=*) state=${prop#*=} ;;
                NFailedUnits=*) nfailed=${prop#*=} ;;
            esac
        done
        uptime_now
        if [ -n "$state" ] || [ "$now" -ge "$until" ] || [ ! -d /run/systemd/system ]; then break; fi
        sleep 0.5
    done
    case "$state" in
        initializing | starting | '')
            left=$((until > now ? until - now : 1))
            state=$(timeout "$left" systemctl is-system-running --wait 2> /dev/null)
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

# What a soak looks at: the health, and what the host runs. Read from
# stdin, like `status`: nothing needs to be installed (after a reboot by
# someone else nothing is).
look() {
    health "$@"
    echo "deploy-flake-current $(readlink -e "$CURRENT")"
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
    echo "deploy-flake-current $(readlink -e "$CURRENT")"
    echo "deploy-flake-profile $profile"
    echo "deploy-flake-booted-system $(readlink -e /run/booted-system)"
    echo "deploy-flake-newest-generation $(newest_generation)"
    entry=$(default_entry)
    if [ -n "$entry" ]; then echo "deploy-flake-default-entry $entry"; fi
    if [ -x "$toplevel/bin/switch-to-configuration" ]; then echo "deploy-flake-switchable yes"; fi
    if [ -x "$toplevel/$selfcheck" ]; then echo "deploy-flake-self-check-script $toplevel/$selfcheck"; fi
    if [ -d /run/systemd/system ]; then echo "deploy-flake-systemd yes"; fi
    if recorded confirmed "$toplevel"; then echo "deploy-flake-confirmed-here yes"; fi
    if recorded booted "$toplevel"; then echo "deploy-flake-boot-written yes"; fi
    reboot_for reboot-new "$toplevel"
    reboot_for reboot-profile "$profile"
    switches_in_progress
}

status() {
    profile=$(readlink -e "$PROFILE")
    echo "deploy-flake-current $(readlink -e "$CURRENT")"
    echo "deploy-flake-profile $profile"
    echo "deploy-flake-booted-system $(readlink -e /run/booted-system)"
    echo "deploy-flake-boot-id $(cat /proc/sys/kernel/random/boot_id)"
    entry=$(default_entry)
    if [ -n "$entry" ]; then echo "deploy-flake-default-entry $entry"; fi
    echo "deploy-flake-state $(systemctl is-system-running 2> /dev/null)"
    systemctl list-units --failed --plain --no-legend --no-pager 2> /dev/null | awk '{print "deploy-flake-failed " $1}'
    reboot_for reboot-profile "$profile"
    # The lock as its holder left it, when the holder is alive: one killed
    # by a signal cannot say it let go.
    if [ -s "$STATE/lock.info" ]; then
        pid='' holder=''
        if [ -s "$STATE/lock.pid" ]; then read -r pid holder < "$STATE/lock.pid"; fi
        if [ -z "$pid" ] || holder_alive "$pid" "$holder"; then
            echo "deploy-flake-lock $(cat "$STATE/lock.info")"
        fi
    fi
    if [ -e "$RECORDS/last" ]; then sed 's/^/deploy-flake-last-/' "$RECORDS/last"; fi
    switches_in_progress
}

# What activating TOPLEVEL would change. A part whose command failed is
# said to be unknown, with why (never "nothing").
diff() {
    toplevel=$1
    current=$(readlink -e "$CURRENT")
    if [ -z "$current" ]; then
        echo "deploy-flake-packages-unknown the host runs no system to compare with"
    else
        # What Nix says (its warnings, its error) goes on to stderr, which
        # the deployer shows; its last words also say why on a failure.
        said=$(mktemp) || said=/dev/null
        out=$(nix --extra-experimental-features nix-command store diff-closures "$current" "$toplevel" 2> "$said")
        rc=$?
        cat "$said" >&2
        if [ "$rc" = 0 ]; then
            printf '%s\n' "$out" | sed '/^$/d; s/^/deploy-flake-package /'
        else
            echo "deploy-flake-packages-unknown nix store diff-closures exited with $rc: $(last_words "$(cat "$said")")"
        fi
        [ "$said" = /dev/null ] || rm -f "$said"
        nix --extra-experimental-features nix-command path-info --closure-size "$current" "$toplevel" |
            awk '{print "deploy-flake-closure " $1 " " $2}'
    fi
    out=$("$toplevel/bin/switch-to-configuration" dry-activate 2>&1 < /dev/null)
    rc=$?
    if [ "$rc" = 0 ]; then
        printf '%s\n' "$out" | sed -n 's/^would \(stop\|restart\|start\|reload\) the following units: /deploy-flake-units \1 /p'
    else
        echo "deploy-flake-units-unknown switch-to-configuration dry-activate exited with $rc: $(last_words "$out")"
    fi
    echo "deploy-flake-booted-system $(readlink -e /run/booted-system)"
    reboot_for reboot-new "$toplevel"
}

# The files of the host lock, and who holds it: "<pid> <run id>" of the
# holder (flock holds the lock while the holder's shell lives).
release_lock() {
    held=''
    if [ -s "$STATE/lock.pid" ]; then read -r held _ < "$STATE/lock.pid"; fi
    if [ "$held" = "$1" ]; then rm -f "$STATE/lock.info" "$STATE/lock.pid"; fi
}

# heartbeat: the deployer said it is alive: the time, for the watchdog and
# for the run's agent waiting for the confirmation.
heartbeat() {
    uptime_now
    printf '%s\n' "$now" > "$STATE/lock.beat"
    if [ -d "$rundir" ]; then printf '%s\n' "$now" > "$rundir/alive"; fi
}

# The last line of TEXT that says something.
last_words() {
    printf '%s\n' "$1" | sed '/^[[:space:]]*$/d' | tail -n 1
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
    info=$1 patience=$2 rundir=$3 preflight=${4:-}
    main=$$
    printf '%s\n' "$info" > "$STATE/lock.info"
    printf '%s %s\n' "$main" "${rundir##*/}" > "$STATE/lock.pid"
    # Ended by a signal it can catch, it leaves no lock behind that nobody
    # holds (`status` also checks that the holder is alive).
    trap 'release_lock "$main"; exit 0' HUP INT TERM
    # Holders are counted: a run that takes its lock back learns whether
    # another run held it in between.
    serial=''
    if [ -s "$STATE/lock.serial" ]; then read -r serial < "$STATE/lock.serial"; fi
    case "$serial" in '' | *[!0-9]*) serial=0 ;; esac
    serial=$((serial + 1))
    printf '%s\n' "$serial" > "$STATE/lock.serial"
    echo "deploy-flake-serial $serial"
    switches_in_progress
    nix_version
    # The deployer's preflight, answered with the lock.
    if [ -n "$preflight" ]; then health "$preflight" "$rundir"; fi
    # Taking the lock (again, after a reconnect) is a sign of life.
    heartbeat
    echo "deploy-flake-locked"
    prune_runs "$rundir"
    # Each line on stdin is a heartbeat. Without one for PATIENCE seconds
    # the deployer is taken for lost (a network partition leaves no EOF)
    # and the lock is released: flock -o holds it only while this shell
    # lives. The deployer hears why, should it still be listening.
    (
        while sleep 2; do
            kill -0 "$main" 2> /dev/null || exit 0
            last=''
            read -r last < "$STATE/lock.beat" 2> /dev/null
            uptime_now
            case "$last" in '' | *[!0-9]*) continue ;; esac
            if [ $((now - last)) -gt "$patience" ]; then
                echo "deploy-flake-lost no heartbeat reached the host for ${patience} s"
                release_lock "$main"
                kill -KILL "$main"
                exit 0
            fi
        done
    ) < /dev/null 2> /dev/null &
    watchdog=$!
    while IFS= read -r _; do
        heartbeat
    done
    kill "$watchdog" 2> /dev/null
    release_lock "$main"
}

# displace RUNID CMD...: a holder of the host lock of run RUNID (one whose
# deployer lost its connection to it) is ended, and the lock free, before
# CMD runs (`exec`): a run takes its own lock back at once, and never
# waits for its stale holder. Another run's holder is left alone.
displace() {
    runid=$1
    shift
    pid='' holder=''
    if [ -s "$STATE/lock.pid" ]; then read -r pid holder < "$STATE/lock.pid"; fi
    if [ "$holder" = "$runid" ] && holder_alive "$pid" "$runid"; then
        # flock (its parent) frees the lock as the holder ends.
        parent=''
        while read -r key value; do
            if [ "$key" = PPid: ]; then parent=$value; fi
        done < "/proc/$pid/status"
        kill -KILL "$pid" 2> /dev/null
        n=0
        while [ "$n" -lt 50 ] && { kill -0 "$pid" || kill -0 "${parent:-$pid}"; } 2> /dev/null; do
            sleep 0.1
            n=$((n + 1))
        done
    fi
    exec "$@"
}

# ---- keys -------------------------------------------------------------------
# Secrets the deployer sends on stdin (never in an argument or the
# environment), staged root-only in the run directory, then written to
# their files: a temporary file in the same directory, owner and mode set
# before any content, then a rename. The previous content of a file this
# run replaces is kept, root-only, beside it (DIR/.deploy-flake-previous/
# RUNID/NAME, a hard link: the same file system, so a key in /run/keys
# never reaches a disk); a rollback puts it back and removes the files
# this run created, a confirmation drops it.

# keys_dir_safe DIR: DIR is missing, or a directory only root may change
# (root writes files there: no one else may swap them underneath).
keys_dir_safe() {
    [ -e "$1" ] || [ -L "$1" ] || return 0
    if [ -L "$1" ] || [ ! -d "$1" ]; then
        echo "deploy-flake agent: key directory $1 is not a directory" >&2
        return 1
    fi
    if [ -n "$(find "$1" -maxdepth 0 \( ! -user 0 -o -perm /022 \) 2> /dev/null)" ]; then
        echo "deploy-flake agent: key directory $1 may be changed by others than root (owner $(stat -c %U "$1"), mode $(stat -c %a "$1")): make it root's, writable by root only" >&2
        return 1
    fi
}

# keys_dir DIR: create it root-owned 0750 (group keys, where there is one),
# its parents 0755.
keys_dir() {
    [ -d "$1" ] && return 0
    (umask 022 && mkdir -p "${1%/*}") && mkdir -m 0750 "$1" || return 1
    if getent group keys > /dev/null 2>&1; then chgrp keys "$1"; fi
}

keys_stage() {
    rundir=$1
    staged=$rundir/staged-keys
    rm -rf "$staged" && mkdir -m 0700 "$staged" || exit 1
    if [ "${2:-}" = keep ]; then : > "$rundir/keys-keep"; fi
    n=0
    while IFS= read -r at; do
        if ! { IFS= read -r dir && IFS= read -r name && IFS= read -r user && IFS= read -r group &&
            IFS= read -r mode && IFS= read -r len; }; then
            echo "deploy-flake agent: the keys ended early" >&2
            rm -rf "$staged"
            exit 1
        fi
        n=$((n + 1))
        head -c "$len" > "$staged/$n"
        if [ "$(wc -c < "$staged/$n")" != "$len" ]; then
            echo "deploy-flake agent: key $name: fewer bytes than announced" >&2
            rm -rf "$staged"
            exit 1
        fi
        printf '%s\n' "$at" "$dir" "$name" "$user" "$group" "$mode" > "$staged/$n.meta"
        keys_dir_safe "$dir" || { rm -rf "$staged"; exit 1; }
        keys_prune "$dir"
        if [ "$at" = pre-activation ] && ! keys_owner_exists "$user" "$group"; then
            echo "key $name: $user:$group does not exist yet: written as root:root, given to $user:$group once the new system has created them"
        fi
    done
    echo "deploy-flake-keys-staged $n"
}

# keys_prune DIR: drop what runs that are gone (the host rebooted, their
# state was removed) kept there of the keys they replaced.
keys_prune() {
    for kept in "$1"/.deploy-flake-previous/*; do
        [ -d "$kept" ] || continue
        [ -d "$STATE/runs/${kept##*/}" ] || rm -rf "$kept"
    done
    rmdir "$1/.deploy-flake-previous" 2> /dev/null
    return 0
}

keys_owner_exists() {
    getent passwd "$1" > /dev/null 2>&1 && getent group "$2" > /dev/null 2>&1
}

# keys_install pre|post|all: write the staged keys of that upload time.
# Stops at the first that cannot be written (what was written stays
# recorded for keys_restore).
keys_install() {
    staged=$rundir/staged-keys
    [ -d "$staged" ] || return 0
    for meta in "$staged"/*.meta; do
        [ -e "$meta" ] || continue
        {
            IFS= read -r at
            IFS= read -r dir
            IFS= read -r name
            IFS= read -r user
            IFS= read -r group
            IFS= read -r mode
        } < "$meta"
        case "$1:$at" in
            pre:pre-activation | post:post-activation | all:*) ;;
            pre:remove)
                key_remove "$dir/$name" || return 1
                rm -f "${meta%.meta}" "$meta"
                continue
                ;;
            *) continue ;;
        esac
        lenient=0
        if [ "$1" = pre ]; then lenient=1; fi
        key_write "${meta%.meta}" "$dir" "$name" "$user" "$group" "$mode" "$lenient" || return 1
        rm -f "${meta%.meta}" "$meta"
    done
}

# key_write STAGED DIR NAME USER GROUP MODE LENIENT: with LENIENT 1 (before
# the switch), an owner the new system has yet to create gets the key
# once it has (keys_own); until then it is root's.
key_write() {
    file=$2/$3 owner=$4:$5 runid=${rundir##*/}
    if ! keys_owner_exists "$4" "$5"; then
        if [ "$7" != 1 ]; then
            log "key $3: user $4 or group $5 does not exist"
            return 1
        fi
        owner=root:root
        printf '%s %s\n' "$4:$5" "$file" >> "$rundir/keys-owners"
    fi
    if ! { keys_dir_safe "$2" && keys_dir "$2"; }; then
        log "key $3: cannot create or use $2"
        return 1
    fi
    tmp=$2/.deploy-flake-new.$3
    rm -f "$tmp"
    if ! { (umask 077 && : > "$tmp") && chown "$owner" "$tmp" && chmod "$6" "$tmp" && cat "$1" > "$tmp"; }; then
        rm -f "$tmp"
        log "key $3: cannot write $tmp"
        return 1
    fi
    if [ -e "$file" ] || [ -L "$file" ]; then
        key_keep "$file" || { rm -f "$tmp"; return 1; }
    else
        echo "new $file" >> "$rundir/keys-written"
    fi
    mv -fT "$tmp" "$file" || { log "key $3: cannot replace $file"; return 1; }
    log "key $3: wrote $file"
}

# key_keep FILE: keep FILE's content as its previous one (a hard link in a
# root-only directory beside it), and record that this run had it.
key_keep() {
    previous_dir=${1%/*}/.deploy-flake-previous runid=${rundir##*/}
    if ! { { [ -d "$previous_dir" ] || mkdir -m 0700 "$previous_dir"; } &&
        { [ -d "$previous_dir/$runid" ] || mkdir -m 0700 "$previous_dir/$runid"; } &&
        ln -P "$1" "$previous_dir/$runid/${1##*/}"; }; then
        log "key ${1##*/}: cannot keep the previous content of $1"
        return 1
    fi
    echo "had $1" >> "$rundir/keys-written"
}

# key_remove FILE: a key the run being reverted created.
key_remove() {
    [ -e "$1" ] || [ -L "$1" ] || return 0
    key_keep "$1" && rm -f "$1" && log "key ${1##*/}: removed $1"
}

# keys_adopt RUNDIR FROM: stage what run FROM's keys were before it (their
# kept content, their owner and mode), and the removal of those it created.
keys_adopt() {
    rundir=$1 from=$2
    staged=$rundir/staged-keys
    rm -rf "$staged" && mkdir -m 0700 "$staged" || exit 1
    n=0
    if [ -e "$from/keys-written" ]; then
        printf '%s\n' "$from" > "$rundir/keys-adopted"
        while read -r what file; do
            n=$((n + 1))
            dir=${file%/*} name=${file##*/}
            if [ "$what" = new ]; then
                printf '%s\n' remove "$dir" "$name" root root 0600 > "$staged/$n.meta"
                : > "$staged/$n"
                continue
            fi
            kept=$dir/.deploy-flake-previous/${from##*/}/$name
            [ -f "$kept" ] || continue
            cat "$kept" > "$staged/$n" || exit 1
            # shellcheck disable=SC2046 # three words
            printf '%s\n' pre-activation "$dir" "$name" $(stat -c '%u %g %a' "$kept") > "$staged/$n.meta"
        done < "$from/keys-written"
    fi
    echo "deploy-flake-keys-staged $n"
}

# The run this one put back the keys of: its kept content is not needed.
keys_forget_adopted() {
    [ -e "$rundir/keys-adopted" ] || return 0
    read -r from < "$rundir/keys-adopted"
    keys_drop_previous "$from"
    rm -f "$rundir/keys-adopted"
}

# keys_drop_previous RUNDIR: what that run kept of the keys it replaced.
keys_drop_previous() {
    [ -e "$1/keys-written" ] || return 0
    while read -r _ file; do
        rm -rf "${file%/*}/.deploy-flake-previous/${1##*/}"
        rmdir "${file%/*}/.deploy-flake-previous" 2> /dev/null
    done < "$1/keys-written"
    rm -f "$1/keys-written" "$1/keys-keep"
}

# Give the keys written as root:root to their owners, now that the new
# system has created them.
keys_own() {
    [ -e "$rundir/keys-owners" ] || return 0
    while read -r owner file; do
        if chown "$owner" "$file" 2> /dev/null; then log "key ${file##*/}: given to $owner"; else log "key ${file##*/}: $owner still does not exist: it stays root's"; fi
    done < "$rundir/keys-owners"
    rm -f "$rundir/keys-owners"
}

# keys_restore: the keys as they were before this run (rollback).
keys_restore() {
    runid=${rundir##*/}
    keys_forget_adopted
    rm -rf "$rundir/staged-keys" "$rundir/keys-owners"
    [ -e "$rundir/keys-written" ] || return 0
    # Newest first.
    sed -n '1!G;h;$p' "$rundir/keys-written" | while read -r what file; do
        dir=${file%/*}
        case "$what" in
            had)
                mv -fT "$dir/.deploy-flake-previous/$runid/${file##*/}" "$file" && log "key ${file##*/}: restored $file"
                ;;
            new) rm -f "$file" && log "key ${file##*/}: removed $file" ;;
        esac
        rmdir "$dir/.deploy-flake-previous/$runid" "$dir/.deploy-flake-previous" 2> /dev/null
    done
    rm -f "$rundir/keys-written"
}

# keys_drop [force]: the previous keys are not needed (confirmed); kept
# when the deployer said it drops them itself (a soak follows).
keys_drop() {
    keys_forget_adopted
    rm -rf "$rundir/staged-keys" "$rundir/keys-owners"
    if [ -e "$rundir/keys-keep" ] && [ "${1:-}" != force ]; then return 0; fi
    keys_drop_previous "$rundir"
}

# The deployer's `deploy-flake keys`: stage and write every key now.
keys_upload() {
    keys_stage "$1" > /dev/null || exit 1
    if keys_install all; then
        keys_drop force
        echo "deploy-flake-keys-uploaded yes"
    else
        keys_restore
        exit 1
    fi
}

cmd=$1
shift
case "$cmd" in
    activate) activate "$@" ;;
    boot) begin "$1" && boot "$@" ;;
    check) check "$@" ;;
    watch) watch "$@" ;;
    launch) launch "$@" ;;
    probe) probe "$@" ;;
    confirm) confirm "$@" ;;
    abort) abort "$@" ;;
    hold) hold "$@" ;;
    displace) displace "$@" ;;
    health) health "$@" ;;
    look) look "$@" ;;
    facts) facts "$@" ;;
    status) status "$@" ;;
    diff) diff "$@" ;;
    keys-stage) keys_stage "$@" ;;
    keys-upload) keys_upload "$@" ;;
    keys-discard) rm -rf "$1/staged-keys" ;;
    keys-drop) rundir=$1 && keys_drop force ;;
    keys-adopt) keys_adopt "$@" ;;
    *) echo "deploy-flake agent: unknown command $cmd" >&2; exit 2 ;;
esac
exit 0
