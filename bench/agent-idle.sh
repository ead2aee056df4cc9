#!/usr/bin/env bash
# Benchmark: what a waiting agent costs its host. One lab target; its
# container's CPU (cgroup usage_usec, read from this side: no login of our
# own) over equal windows:
#   idle      nothing of ours runs on it
#   confirm   the agent waits for the confirmation (a health check that
#             sleeps keeps the deployer from confirming): the agent's wait
#             loop and the lock's heartbeat
#   activate  the agent runs a 20 s activation (slow-v1) and the deployer
#             watches it: the agent's bounded run and the watch loop
# and prints each window's CPU above idle as a share of one core.
#
#   bash bench/agent-idle.sh [WINDOW_SECONDS]   (default 20; as root)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/deploy-flake-agent-idle.XXXXXX)
export BENCH_PREFIX=idle
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
WINDOW=${1:-20}
BIN=${BIN:-$ROOT/target/release/deploy-flake}
[ -x "$BIN" ] || die "build first: cargo build --release"

bench_init
claim_indexes 1
boot_targets
FLAKE=$WORK/flake
make_flake "$FLAKE"
idx=${IDXS[0]}

hosts() { # CONFIGURATION [NIX-EXTRA]
    cat >"$FLAKE/hosts.nix" <<EOF
{
  h = { hostname = "10.77.$idx.2"; configuration = "$1"; sshOpts = [ "-i" "$WORK/id_ed25519" "-o" "UserKnownHostsFile=$WORK/known_hosts" ]; ${2:-} };
}
EOF
}

deploy() { "$BIN" --json --flake "$FLAKE" --all; }

# CPU (microseconds) the target used over WINDOW seconds from now.
window_usec() {
    local a b
    a=$(target_cpu_usec 1)
    sleep "$WINDOW"
    b=$(target_cpu_usec 1)
    echo $((b - a))
}

# Waits until the run's --json output (file $1) has phase-started $2.
wait_phase() {
    local n=0
    until grep -q "\"event\":\"phase-started\".*\"phase\":\"$2\"" "$1" 2>/dev/null; do
        sleep 0.2
        n=$((n + 1))
        ((n < 900)) || die "no $2 phase within 180 s: $(tail -3 "$1")"
    done
}

hosts healthy-v1
deploy >/dev/null || die "baseline deploy failed"
sleep 5
idle=$(window_usec)

# The confirmation held back by a health check that takes WINDOW + 15 s.
hosts healthy-v2 "healthChecks = [ { command = [ \"sleep\" \"$((WINDOW + 15))\" ]; timeout = $((WINDOW + 60)); } ]; timeouts.confirm = $((WINDOW + 60));"
deploy >"$WORK/confirm.json" &
pid=$!
wait_phase "$WORK/confirm.json" confirm
sleep 2
confirm=$(window_usec)
wait "$pid" || die "the deploy with a slow health check failed: $(tail -2 "$WORK/confirm.json")"

# A 20 s activation, watched.
hosts slow-v1 "timeouts.activate = 120;"
deploy >"$WORK/activate.json" &
pid=$!
wait_phase "$WORK/activate.json" activate
sleep 1
WINDOW=$((WINDOW < 15 ? WINDOW : 15))
act_window=$WINDOW
activate=$(window_usec)
wait "$pid" || die "the slow activation failed: $(tail -2 "$WORK/activate.json")"

share() { # USEC_ABOVE_IDLE SECONDS -> percent of one core
    awk -v u="$1" -v s="$2" 'BEGIN { printf "%.2f%%", (u < 0 ? 0 : u) / (s * 1e6) * 100 }'
}
idle_rate=$((idle / ${1:-20}))
printf '%-9s %10s %12s %10s\n' window seconds cpu_ms above_idle
printf '%-9s %10s %12s %10s\n' idle "${1:-20}" $((idle / 1000)) -
printf '%-9s %10s %12s %10s\n' confirm "${1:-20}" $((confirm / 1000)) "$(share $((confirm - idle)) "${1:-20}")"
printf '%-9s %10s %12s %10s\n' activate "$act_window" $((activate / 1000)) \
    "$(share $((activate - idle_rate * act_window)) "$act_window")"
