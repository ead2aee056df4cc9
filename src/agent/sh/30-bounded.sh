# shellcheck shell=sh
# A command under a time bound and the deployer's abort, its output
# capped on its way to the log.
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

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
