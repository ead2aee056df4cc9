#!/usr/bin/env bash
# Benchmark: what capping the activation's log costs a target. The
# agent's cap_copy (taken from src/agent/sh/: the shell's own read
# and printf, line by line, so the log follows the output live) against a
# plain append (cat, what the log was before it had a cap), on an
# activation's output of LINES lines of 88 bytes through a FIFO, as the
# agent runs it. CPU seconds (user + system, the writer's subtracted) of
# each, and their ratio, in one run; dash, as on the lab's targets.
#
#   bash bench/log-cap.sh [LINES]    (default 3000: the lab's chatty activation)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LINES=${1:-3000}
WORK=$(mktemp -d /tmp/deploy-flake-log-cap.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
command -v dash >/dev/null || { echo "log-cap.sh: needs dash" >&2; exit 1; }

sed -n '/^LOG_CAP=/p; /^cap_copy() {/,/^}/p' "$ROOT"/src/agent/sh/*.sh >"$WORK/cap.sh"
cat >"$WORK/run.sh" <<'SH'
# run.sh HOW LINES: the output of LINES lines through a FIFO into HOW.
. "$(dirname "$0")/cap.sh"
mkfifo "$WORK/out.fifo"
case "$1" in
    none) cat "$WORK/out.fifo" > /dev/null & ;;
    cat) cat "$WORK/out.fifo" >> "$WORK/log" & ;;
    cap) cap_copy "$LOG_CAP" < "$WORK/out.fifo" >> "$WORK/log" & ;;
esac
reader=$!
i=0
while [ "$i" -lt "$2" ]; do
    echo "activation line $i: padding padding padding padding padding padding padding padding"
    i=$((i + 1))
done > "$WORK/out.fifo"
wait "$reader"
SH
export WORK

cpu() { # HOW: CPU seconds of one run
    rm -f "$WORK/log" "$WORK/out.fifo"
    local t
    t=$( { TIMEFORMAT='%U %S'; time dash "$WORK/run.sh" "$1" "$LINES" >/dev/null; } 2>&1 )
    awk -v t="$t" 'BEGIN { split(t, a, " "); printf "%.3f", a[1] + a[2] }'
}

best() { # HOW: the least of 5 runs
    local b='' c
    for _ in 1 2 3 4 5; do
        c=$(cpu "$1")
        if [ -z "$b" ] || awk -v c="$c" -v b="$b" 'BEGIN { exit !(c < b) }'; then b=$c; fi
    done
    echo "$b"
}

writer=$(best none)
plain=$(best cat)
capped=$(best cap)
bytes=$(wc -c <"$WORK/log")
awk -v w="$writer" -v p="$plain" -v c="$capped" -v n="$LINES" -v b="$bytes" 'BEGIN {
    p -= w; c -= w
    printf "%d lines (%d bytes in the log), CPU s beyond the writer, best of 5:\n", n, b
    printf "  plain append (cat)  %.3f\n", p
    if (p >= 0.005) printf "  capped (cap_copy)   %.3f   (%.1fx)\n", c, c / p
    else printf "  capped (cap_copy)   %.3f   (%.1f us per line; cat is below the timer)\n", c, c * 1e6 / n
}'
