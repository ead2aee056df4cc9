#!/usr/bin/env bash
# Benchmark: where systems are built. 10 lab targets share one system
# (`bulky`: 16 MiB that do not compress, a fresh draw per run), deployed
# in each set-up with a new salt (so every run copies a new closure):
#   target       buildOn = "target": each host evaluates and builds it
#   local        buildOn = "local": built here, copied from here to each host
#   local+cache  the same, pushed once (--push-to, signed) to a cache the
#                hosts substitute from
#   host+relay   buildOn = "host": built on a build host (an 11th target,
#                linked to the others), relayed by this machine to each host
#   host+cache   built on the build host, pushed once from there to its
#                cache (served over HTTP from its lab address)
#   host+direct  built on the build host, copied by it to each host
#                (copyFrom = "build-host", its own ssh key)
# and reports, per set-up, the wall time of the run and the bytes this
# machine sent (the tx counters of the lab links to the targets and the
# build host; a push to a cache on this machine's disk, local+cache,
# counts as sent too), with ratios against `local`: medians of REPS rounds
# (3), each round every set-up in turn.
#
#   bash bench/elsewhere.sh            (as root, after tests/prepare.sh)
#   HOSTS=10 REPS=3 SETUPS="local host+cache" bash bench/elsewhere.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
WORK=$(mktemp -d /tmp/deploy-flake-bench.XXXXXX)
BENCH_PREFIX=elsewhere
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
HOSTS=${HOSTS:-10}
SETUPS=${SETUPS:-"target local local+cache host+relay host+cache host+direct"}
REPS=${REPS:-3}

(cd "$ROOT" && cargo build --release --locked -q)
bin=$ROOT/target/release/deploy-flake
bench_init
claim_indexes $((HOSTS + 1))
boot_targets
BH=${IDXS[0]} BH_NAME=${NAMES[0]}
TARGETS=("${IDXS[@]:1}")

lab_ssh() { # IDX CMD...
    local idx=$1
    shift
    ssh -i "$WORK/id_ed25519" -o "UserKnownHostsFile=$WORK/known_hosts" -o BatchMode=yes \
        -o LogLevel=ERROR "root@10.77.$idx.2" "$@"
}

# The build host's cache: /var/cache/lab-cache there, served over HTTP from
# its address (in its network namespace, linked to every target), signed
# with a key every target trusts. This machine reaches the same directory
# through the build host's root file system (local+cache).
CACHE_DIR=/var/cache/lab-cache
CACHE_HERE=$WORK/targets/$BH_NAME/merged$CACHE_DIR
KEY=$WORK/cache.secret
nix --extra-experimental-features nix-command key generate-secret --key-name lab-bench-1 >"$KEY"
PUBLIC=$(nix --extra-experimental-features nix-command key convert-secret-to-public <"$KEY")
lab_ssh "$BH" mkdir -p "$CACHE_DIR"
ssh-keygen -q -t ed25519 -N '' -C build-host -f "$WORK/bh_key"
lab_ssh "$BH" "mkdir -p /root/.ssh && cat >/root/.ssh/id_ed25519 && chmod 0600 /root/.ssh/id_ed25519" <"$WORK/bh_key"
lab_ssh "$BH" "cat >/root/.ssh/known_hosts" <"$WORK/known_hosts"
for idx in "${TARGETS[@]}"; do
    bash "$LAB" link "$BH_NAME" "$BENCH_PREFIX-$idx" "$WORK"
    lab_ssh "$idx" "cat >>/root/.ssh/authorized_keys" <"$WORK/bh_key.pub"
    lab_ssh "$idx" "printf 'substituters = http://10.77.$BH.2:8080\ntrusted-public-keys = $PUBLIC\n' >>/etc/nix/nix.conf && systemctl restart nix-daemon" &
done
wait_all || die "preparing the targets failed"
ip netns exec "$BH_NAME" /usr/bin/python3 -c '
import functools, http.server, socketserver, sys
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((sys.argv[1], int(sys.argv[2])), h).serve_forever()' \
    "10.77.$BH.2" 8080 "$CACHE_HERE" >/dev/null 2>&1 &
# (a background job of this shell: bench_cleanup stops it)

flake=$WORK/flake
rm -rf "$flake"
cp -r "$ROOT/tests/fixtures/lab" "$flake"
cp -r "$ROOT/lib" "$flake/lib"
opts="[ \"-i\" \"$WORK/id_ed25519\" \"-o\" \"UserKnownHostsFile=$WORK/known_hosts\" ]"

write_hosts_for() { # SETUP: hosts.nix for the targets, all `bulky`
    local extra idx
    case $1 in
        target) extra='buildOn = "target";' ;;
        local | local+cache) extra='buildOn = "local";' ;;
        host+relay | host+cache) extra="buildOn = \"host\"; buildHost = \"root@10.77.$BH.2\"; buildHostSshOpts = $opts;" ;;
        host+direct) extra="buildOn = \"host\"; buildHost = \"root@10.77.$BH.2\"; buildHostSshOpts = $opts; copyFrom = \"build-host\";" ;;
        *) die "unknown set-up $1" ;;
    esac
    {
        echo "{"
        for idx in "${TARGETS[@]}"; do
            printf '  h%s = { hostname = "10.77.%s.2"; configuration = "bulky"; sshOpts = %s; %s };\n' \
                "$idx" "$idx" "$opts" "$extra"
        done
        echo "}"
    } >"$flake/hosts.nix"
}

sent_bytes() { # the tx counters of every link of this run (targets and build host)
    local idx total=0
    for idx in "${IDXS[@]}"; do
        total=$((total + $(cat "/sys/class/net/dfl$idx/statistics/tx_bytes")))
    done
    echo "$total"
}

cache_bytes() { du -sb "$CACHE_HERE" | cut -f1; }

results=$WORK/results.tsv
: >"$results"
run_setup() { # SETUP: one deploy of a new salt; a line of results.tsv
    local setup=$1 args pushed0 sent0 t0 t1 sent closure from
    write_hosts_for "$setup"
    printf '"%s-%s"' "$setup" "$RANDOM$RANDOM" >"$flake/build-salt"
    args=(--all --flake "$flake" --json)
    case $setup in
        local+cache) args+=(--push-to "file://$CACHE_HERE?compression=none" --sign-key "$KEY") ;;
        host+cache) args+=(--push-to "file://$CACHE_DIR?compression=none" --sign-key "$KEY") ;;
    esac
    pushed0=$(cache_bytes) sent0=$(sent_bytes) t0=$(date +%s.%N)
    if ! "$bin" "${args[@]}" >"$WORK/$setup.jsonl" 2>"$WORK/$setup.err"; then
        tail -n 20 "$WORK/$setup.err" "$WORK/$setup.jsonl" >&2
        die "$setup: the deploy failed"
    fi
    t1=$(date +%s.%N)
    sent=$(($(sent_bytes) - sent0))
    if [ "$setup" = local+cache ]; then sent=$((sent + $(cache_bytes) - pushed0)); fi
    closure=$(lab_ssh "${TARGETS[0]}" "nix path-info --closure-size \$(readlink -e /run/current-system)" | awk '{print $NF}')
    from=$(grep '"event":"host-finished"' "$WORK/$setup.jsonl" | grep -o '"copied_from":[^,}]*' |
        sed 's/"copied_from"://; s/"//g' | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')
    printf '%s\t%s\t%s\t%s\t%s\n' "$setup" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')" \
        "$sent" "$closure" "$from" >>"$results"
    log "$setup: $(tail -n 1 "$results" | cut -f2)s, $sent bytes sent"
}

# Rounds of every set-up in turn, so that other load on this machine falls
# on all of them alike.
for ((rep = 1; rep <= REPS; rep++)); do
    for setup in $SETUPS; do run_setup "$setup"; done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
echo "$HOSTS hosts, one system (a closure of $(cut -f4 "$results" | head -n1) bytes); medians of $REPS run(s):"
local_wall=$(awk -F'\t' '$1 == "local" { print $2 }' "$results" | median)
local_sent=$(awk -F'\t' '$1 == "local" { print $3 }' "$results" | median)
printf '%-12s %8s %14s %9s %9s %10s  %s\n' set-up "wall s" "bytes sent" closures wall/local bytes/local copied_from
for setup in $SETUPS; do
    wall=$(awk -F'\t' -v s="$setup" '$1 == s { print $2 }' "$results" | median)
    sent=$(awk -F'\t' -v s="$setup" '$1 == s { print $3 }' "$results" | median)
    closure=$(awk -F'\t' -v s="$setup" '$1 == s { print $4 }' "$results" | head -n 1)
    from=$(awk -F'\t' -v s="$setup" '$1 == s { print $5 }' "$results" | head -n 1)
    awk -v s="$setup" -v w="$wall" -v b="$sent" -v c="$closure" -v lw="${local_wall:-0}" -v lb="${local_sent:-0}" -v f="$from" 'BEGIN {
        printf "%-12s %8.1f %14d %9.2f %9s %10s  %s\n", s, w, b, b / c,
            lw ? sprintf("%.2f", w / lw) : "-", lb ? sprintf("%.3f", b / lb) : "-", f }'
done
