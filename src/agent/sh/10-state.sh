# shellcheck shell=sh
# The run's state and records: the status file and what it wakes, the
# host's last deploy, the log, and running what the system brings.
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

set_status() {
    status_intended="$*"
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
    [ -z "${status_lost:-}" ] || return 0
    status_lost=$1
    agent_says "could not record the state '$1' in $rundir/status ($(run_space) KiB free in /run); stopping"
    case "$1" in
        rolling-back | rolled-back | rollback-failed) return 0 ;;
        awaiting-confirmation)
            roll_back not-confirmed "the agent could not record its state"
            agent_says "$status_intended; it runs $(readlink -f "$CURRENT")"
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
            while IFS= read -r remember_line; do printf '%s\n' "$remember_line"; done < "$rundir/origin"
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
cap_lines() {
    LC_ALL=C
    export LC_ALL
    if command -v stdbuf > /dev/null 2>&1; then
        stdbuf -oL cut -b "1-$((LINE_MAX + 1))"
    else
        cut -b "1-$((LINE_MAX + 1))"
    fi | while IFS= read -r cap_line || [ -n "$cap_line" ]; do
        if [ "${#cap_line}" -gt "$LINE_MAX" ]; then
            printf '%s [truncated at %s bytes]\n' "${cap_line%?}" "$LINE_MAX"
        else
            printf '%s\n' "$cap_line"
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
    for stc_word in "$@"; do
        case "$stc_word" in
            NIXOS_NO_CHECK=1 | NIXOS_INSTALL_BOOTLOADER=1) stc_env="$stc_env $stc_word" ;;
            *) echo "deploy-flake agent: refusing environment '$stc_word'" >&2; exit 2 ;;
        esac
    done
}

# record KIND TOPLEVEL: remember across reboots that this system was
# confirmed (or got its boot entry) on this host. Records of systems no
# longer in the store are dropped.
# Sets $stamp (the time), which the state change that follows records too.
record() {
    [ -d "$RECORDS/$1" ] || mkdir -p "$RECORDS/$1" || return
    for record_old in "$RECORDS/$1"/*; do
        [ -e "$record_old" ] && [ ! -e "/nix/store/${record_old##*/}" ] && rm -f "$record_old"
    done
    stamp=$(date +%s)
    printf '%s %s\n' "${rundir##*/}" "$stamp" > "$RECORDS/$1/${2##*/}"
}

recorded() {
    [ -e "$RECORDS/$1/${2##*/}" ]
}

# The last line of TEXT that says something.
last_words() {
    printf '%s\n' "$1" | sed '/^[[:space:]]*$/d' | tail -n 1
}
