# shellcheck shell=sh
# Waiting: the pace of a wait, and naps that a state change ends at once.
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

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
    waited=0 nap_ticker='' nap_fifo="$rundir/wake.$$" nap_bounded=${1:-}
    # (A FIFO of a process that had this pid and was killed may be there.)
    mkfifo -m 600 "$nap_fifo" 2> /dev/null ||
        { rm -f "$nap_fifo" && mkfifo -m 600 "$nap_fifo" 2> /dev/null; } || { nap_fifo=''; return 0; }
    exec 3<> "$nap_fifo"
    [ -z "$nap_bounded" ] || return 0
    nap_owner=$$
    (
        while pause; do
            kill -0 "$nap_owner" 2> /dev/null || exit 0
            echo "$waited" || exit 0
        done
    ) >&3 2> /dev/null < /dev/null &
    nap_ticker=$!
}

nap() {
    if [ -z "$nap_fifo" ]; then
        pause
        return
    fi
    if [ -n "$nap_bounded" ]; then
        # Woken early, this counts a whole second: deadlines are checked
        # against the clock, $waited only paces the checks.
        timeout 1 head -n 1 <&3 > /dev/null 2>&1
        waited=$((waited + 10))
        return
    fi
    read -r nap_line <&3
    case "$nap_line" in
        *[!0-9]* | '') ;;
        *) waited=$nap_line ;;
    esac
}

nap_done() {
    [ -n "$nap_fifo" ] || return 0
    if [ -n "$nap_ticker" ]; then kill "$nap_ticker" 2> /dev/null; fi
    exec 3<&-
    rm -f "$nap_fifo"
    nap_fifo=''
}

# Wake every waiter of the run, never waiting on one: the line is written
# without blocking (dd, O_NONBLOCK), so a FIFO whose waiter is gone (no
# reader) or stopped (its buffer full) is passed over; a waiter with a full
# buffer has wakes enough to read.
wake_all() {
    for wake_fifo in "$rundir"/wake.*; do
        if [ -p "$wake_fifo" ]; then
            echo w | dd of="$wake_fifo" oflag=nonblock status=none 2> /dev/null
        fi
    done
}
