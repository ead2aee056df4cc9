#!/usr/bin/env bash
# Benchmark: what keys and a sudo password cost a deploy of a change.
#
# On one lab target, REPS rounds; each round deploys a change (healthy-v1
# and healthy-v2 alternately, a new salt each time: a build and a restarted
# unit) three ways, in turn:
#   plain  as root, no keys
#   keys   as root, with three keys (two pre-activation from files here,
#          one post-activation from a command here)
#   nopw   as deploy, whose sudo asks for no password (sudo -n)
#   sudo   as pwuser, whose sudo asks for a password (--sudo-password-command)
# and reports each way's median wall time and its ratio to `plain`, from
# the same rounds. Keys cost one round trip (staging them) and their
# writes in the agent; a password costs two commands at connect (does sudo
# ask? is the password right?), and sudo's authentication (PAM) in every
# command run as root, where `nopw` has none.
#
#   bash bench/keys.sh            (as root, after tests/prepare.sh)
#   REPS=7 bash bench/keys.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
WORK=$(mktemp -d /tmp/deploy-flake-bench.XXXXXX)
BENCH_PREFIX=benchkeys
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
REPS=${REPS:-5}

(cd "$ROOT" && cargo build --release --locked -q)
bin=$ROOT/target/release/deploy-flake
bench_init
flake=$WORK/flake
make_flake "$flake"
claim_indexes 1
boot_targets
idx=${IDXS[0]}
for k in 1 2; do printf 'key %s\n' "$k" >"$WORK/key$k"; done
printf 'lab-password-not-secret\n' >"$WORK/pw"

hosts() { # CONFIGURATION WAY
    local extra=""
    case "$2" in
        keys) extra="keys = { a.keyFile = \"$WORK/key1\"; b.keyFile = \"$WORK/key2\"; c = { keyCommand = [ \"printf\" \"c\" ]; uploadAt = \"post-activation\"; }; };" ;;
        sudo) extra='sshUser = "pwuser";' ;;
        nopw) extra='sshUser = "deploy";' ;;
    esac
    printf '{\n  h = { hostname = "10.77.%s.2"; configuration = "%s"; sshOpts = [ "-i" "%s" "-o" "UserKnownHostsFile=%s" ]; %s };\n}\n' \
        "$idx" "$1" "$WORK/id_ed25519" "$WORK/known_hosts" "$extra" >"$flake/hosts.nix"
}

deploy() { # WAY: prints the wall time in ms
    local args=(--flake "$flake" --all --json) t0 t1
    if [ "$1" = sudo ]; then args+=(--sudo-password-command "cat $WORK/pw"); fi
    t0=$(date +%s%N)
    "$bin" "${args[@]}" >"$WORK/out.json" 2>"$WORK/err" || die "$1: deploy failed: $(tail -5 "$WORK/err") $(tail -3 "$WORK/out.json")"
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}

set_salt "$flake" "base-$RANDOM"
hosts healthy-v1 plain
deploy plain >/dev/null
cfg=healthy-v1
declare -A times
for ((r = 1; r <= REPS; r++)); do
    for way in plain keys nopw sudo; do
        if [ "$cfg" = healthy-v1 ]; then cfg=healthy-v2; else cfg=healthy-v1; fi
        set_salt "$flake" "r$r-$way-$RANDOM"
        hosts "$cfg" "$way"
        ms=$(deploy "$way")
        times[$way]+="$ms "
        log "round $r: $way ${ms} ms"
    done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
base=$(echo "${times[plain]}" | median)
for way in plain keys nopw sudo; do
    m=$(echo "${times[$way]}" | median)
    awk -v w="$way" -v m="$m" -v b="$base" 'BEGIN { printf "%-6s median %6d ms  (%.2fx plain)  all: ", w, m, m / b }'
    echo "${times[$way]}"
done
