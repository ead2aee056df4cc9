#!/usr/bin/env bash
# Benchmark: does the host lock's heartbeat reach the target while the same
# ssh connection carries a bulk copy over a slow link? One lab target
# behind a shaped link (tbf: RATE kbit/s, and a queue of QUEUE seconds of it, on
# this side's end of its veth: the deployer-to-target direction), and a
# flake whose source holds SIZE MB of random bytes, so that the copy takes
# about SIZE*8000/RATE seconds. Once a second, from this side (nsenter into
# the target: no login, nothing on the link), the age of the lock holder's
# last heartbeat (/run/deploy-flake/lock.beat against /proc/uptime). Prints
# the copy's duration, the oldest heartbeat seen during it (the lock holder
# gives up at 30 s), and how the deploy ended.
#
#   bash bench/slow-link.sh [RATE_KBIT] [SIZE_MB] [QUEUE_SECONDS]
#   (defaults 1000, 4, 10; as root; BIN=... for another deploy-flake)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/deploy-flake-slow-link.XXXXXX)
export BENCH_PREFIX=slow
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
RATE=${1:-1000} SIZE=${2:-4} QUEUE=${3:-10}
BIN=${BIN:-$ROOT/target/debug/deploy-flake}
[ -x "$BIN" ] || die "build first: cargo build"

bench_init
claim_indexes 1
boot_targets
idx=${IDXS[0]} name=${NAMES[0]}
FLAKE=$WORK/flake
make_flake "$FLAKE"
set_salt "$FLAKE" "slow-link-$$"
hosts() { # CONFIGURATION
    cat >"$FLAKE/hosts.nix" <<EOF
{
  h = { hostname = "10.77.$idx.2"; configuration = "$1"; sshOpts = [ "-i" "$WORK/id_ed25519" "-o" "UserKnownHostsFile=$WORK/known_hosts" ]; timeouts.copy = 3600; };
}
EOF
}
hosts healthy-v1
"$BIN" --json --flake "$FLAKE" --all >/dev/null || die "baseline deploy failed"

# The container's init, for nsenter.
pid=$(awk 'NR == 1' "$CG_LAB/$name/payload/init.scope/cgroup.procs")
[ -n "$pid" ] || die "no process of $name in $CG_LAB/$name"
beat_age() {
    local beat up
    beat=$(nsenter -t "$pid" -m -- cat /run/deploy-flake/lock.beat 2>/dev/null) || return 1
    read -r up _ </proc/uptime
    echo $((${up%.*} - beat))
}

head -c $((SIZE * 1024 * 1024)) /dev/urandom >"$FLAKE/blob"
hosts healthy-v2
bytes=$((RATE * 1000 * QUEUE / 8))
tc qdisc add dev "dfl$idx" root tbf rate "${RATE}kbit" burst 32kbit limit "$bytes"
"$BIN" --json --flake "$FLAKE" --all >"$WORK/run.json" &
run=$!
max=0 copying=0 t0=0 t1=0
while kill -0 "$run" 2>/dev/null; do
    if ((!copying)) && grep -q '"phase":"copy"' "$WORK/run.json"; then copying=1 t0=$SECONDS; fi
    if ((copying == 1)) && grep -q '"phase-started","host":"h","phase":"build"' "$WORK/run.json"; then
        copying=2 t1=$SECONDS
    fi
    if ((copying == 1)) && age=$(beat_age); then ((age > max)) && max=$age; fi
    sleep 1
done
wait "$run" && rc=0 || rc=$?
tc qdisc del dev "dfl$idx" root
((t1)) || t1=$SECONDS
lost=$(grep -c '"text":"lost the host lock' "$WORK/run.json" || true)
outcome=$(grep -o '"outcome":"[a-z-]*"' "$WORK/run.json" | tail -n 1)
printf 'rate %s kbit/s, source %s MB, queue %s s: copy %s s, oldest heartbeat %s s (patience 30 s), lock lost %s time(s), exit %s, %s\n' \
    "$RATE" "$SIZE" "$QUEUE" $((t1 - t0)) "$max" "$lost" "$rc" "$outcome"
