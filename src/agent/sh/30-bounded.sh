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
    bounded_secs=$1 bounded_abortable=$2
    shift 2
    rm -f "$rundir/ended-by"
    bounded_out="$rundir/output.$$"
    rm -f "$bounded_out"
    # (printf: a failed redirection of `:` would end the shell.)
    if ! { printf '' >> "$rundir/log"; } 2> /dev/null; then
        # A log that cannot be written: the command runs all the same.
        bounded_out=/dev/null bounded_capper=''
    elif mkfifo -m 600 "$bounded_out"; then
        bounded_used=$(wc -c < "$rundir/log" 2> /dev/null || echo 0)
        cap_lines < "$bounded_out" | cap_copy $((LOG_CAP > bounded_used ? LOG_CAP - bounded_used : 0)) >> "$rundir/log" 2>&1 &
        bounded_capper=$!
    else
        bounded_out="$rundir/log" bounded_capper=''
    fi
    (umask 022 && exec setsid timeout -k "$grace_secs" $((bounded_secs + grace_secs)) "$@") >> "$bounded_out" 2>&1 < /dev/null &
    bounded_child=$!
    guard "$bounded_child" "$bounded_secs" "$bounded_abortable" "$bounded_capper" < /dev/null > /dev/null 2>&1 &
    bounded_guard=$!
    wait "$bounded_child"
    bounded_rc=$?
    # Every line CMD printed is in the log before its end is told.
    if [ -n "$bounded_capper" ]; then wait "$bounded_capper"; fi
    rm -f "$rundir/output.$$"
    kill "$bounded_guard" 2> /dev/null
    wait "$bounded_guard" 2> /dev/null
    if [ -s "$rundir/ended-by" ]; then
        read -r bounded_rc < "$rundir/ended-by"
    elif [ "$bounded_rc" = 125 ]; then
        # (`timeout` itself failed: not the deployer's abort.)
        bounded_rc=126
    fi
    rm -f "$rundir/ended-by"
    return "$bounded_rc"
}

# cap_copy ROOM: stdin to stdout, each line as it comes (the log follows
# the output live: the shell's own read and printf buffer nothing), up to
# ROOM bytes (the log of a run holds at most LOG_CAP); then a line that
# says so, and the rest read away (the writer never blocks on it, nor dies
# of a closed pipe).
cap_copy() {
    copy_room=$1 copy_line=''
    while IFS= read -r copy_line; do
        if [ "$copy_room" -le 0 ]; then
            printf 'deploy-flake: the log is capped at %s bytes; the rest of this output is dropped\n' "$LOG_CAP"
            cat > /dev/null
            return 0
        fi
        if [ "${#copy_line}" -ge "$copy_room" ]; then copy_line=$(printf "%.$((copy_room - 1))s" "$copy_line"); fi
        printf '%s\n' "$copy_line"
        copy_room=$((copy_room - ${#copy_line} - 1))
    done
    # (A last line without its newline.)
    if [ -n "$copy_line" ]; then printf '%s' "$copy_line"; fi
}

# guard PID SECS ABORTABLE [CAPPER]: end the process group PID after SECS
# (124), or when ABORTABLE is 1 and the deployer asks to abort (125); the
# reason goes to $rundir/ended-by. Once PID has ended, CAPPER (what passes
# its output on) gets $grace_secs to see the end of it: a process the
# activation left behind with its output open is not waited for.
guard() {
    guard_child=$1 guard_limit=$(($2 * 10)) guard_abortable=$3 guard_capper=${4:-}
    waited=0
    while kill -0 "$guard_child" 2> /dev/null; do
        guard_why=
        if [ "$guard_abortable" = 1 ] && [ -e "$rundir/abort" ]; then
            guard_why=125
        elif [ "$waited" -ge "$guard_limit" ]; then
            guard_why=124
        fi
        if [ -n "$guard_why" ]; then
            echo "$guard_why" > "$rundir/ended-by"
            kill -TERM -"$guard_child" 2> /dev/null
            guard_n=0
            while kill -0 "$guard_child" 2> /dev/null && [ "$guard_n" -lt $((grace_secs * 5)) ]; do
                sleep 0.2
                guard_n=$((guard_n + 1))
            done
            kill -KILL -"$guard_child" 2> /dev/null
            break
        fi
        pause
    done
    [ -n "$guard_capper" ] || return 0
    guard_n=0
    while kill -0 "$guard_capper" 2> /dev/null; do
        if [ "$guard_n" -ge $((grace_secs * 5)) ]; then
            kill "$guard_capper" 2> /dev/null
            return 0
        fi
        sleep 0.2
        guard_n=$((guard_n + 1))
    done
}
