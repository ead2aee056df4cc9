#!/usr/bin/env bash
# Benchmark: deploy-flake against a fleet of N lab targets (default 100).
#
# Boots N trixie lab targets (BOOT_BATCH=10 at a time), deploys healthy-v1
# to all of them (not measured), then, for each --parallel value (default
# "0 16": --max-parallel 0 and the default), measures
#   change  a small change on every host: healthy-v1 <-> healthy-v2 with a
#           new salt, so every target builds a new toplevel and restarts a
#           unit (--reuse-builds: the same two toplevels every time)
#   no-op   the same run again: every host is up to date
# and reports for each run:
#   wall_s        wall time of the run
#   floor_s       the targets' CPU time over the run / the cores: targets
#                 share this machine's cores with the deployer, so no run
#                 can be faster
#   dfl_cpu/h     deployer CPU per host: user+sys of every process of the
#                 tool's tree, ssh masters included, from a cgroup of its
#                 own (bench/measure.py says why a cgroup)
#   tgt_cpu/h     targets' CPU per host: their lab cgroups' usage_usec,
#                 before and after
#   logins/h      ssh logins per host: "Accepted publickey" lines of sshd
#                 in each target's journal, read from this side, before and
#                 after (counting costs no login)
#   tool_hwm      the tool's own peak RSS (VmHWM)
#   tree_pss/rss  peak of the summed PSS / RSS of the tool's whole tree
#                 (sampled every 100 ms); cg_mem: the tree's memory cgroup
#                 high-water mark (page cache included)
#   outcomes      from run-finished: dep(loyed), utd (up to date), rb
#                 (rolled back), fail(ed); failures and notes are listed
# --curve boots max(--sizes) targets (default "1 10 50 100") and measures
# the same on the first n of them for each n, then prints CPU per host by n.
#
#   bash bench/fleet.sh [N]                      (as root, after tests/prepare.sh)
#   bash bench/fleet.sh 30 --parallel 16
#   bash bench/fleet.sh --curve --sizes "1 10 50"
#   bash bench/fleet.sh 10 --ssh-opt KexAlgorithms=curve25519-sha256
#                                  (an ssh option for every host; repeatable)
#   bash bench/fleet.sh 30 -v      (the tool's -v: each command it runs and its
#                                  duration, in the events' .stderr files)
#   bash bench/fleet.sh --deployer sid
#                                  deploy from a machine of another suite: the
#                                  same binary in a container of that suite's
#                                  root file system (its Nix and OpenSSH; sid:
#                                  Nix 2.34, OpenSSH 10.6) on the lab's network
#                                  (tests/lab/lab.sh deployer), its store kept
#                                  across the runs. dfl_cpu/h then also counts
#                                  the container's start (nspawn, about 0.1 s
#                                  per run), and own/kid/mst is not split (the
#                                  tool is not measure.py's child)
# The tool's --json events and the results stay in the directory printed
# at the end. Targets are stopped and lab indexes released on any exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
WORK=$(mktemp -d /tmp/deploy-flake-fleet.XXXXXX)
BENCH_PREFIX=fleet
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

n=100 parallel="0 16" curve=0 sizes="1 10 50 100" reuse=0 verbose=() deployer=""
while (($#)); do
    case $1 in
        --parallel) parallel=$2; shift 2 ;;
        --curve) curve=1; shift ;;
        --sizes) sizes=$2; shift 2 ;;
        --reuse-builds) reuse=1; shift ;;
        -v) verbose=(-v); shift ;;
        --ssh-opt) SSH_OPTS+=("$2"); shift 2 ;;
        --deployer) deployer=$2; shift 2 ;;
        [0-9]*) n=$1; shift ;;
        *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done
if ((curve)); then
    n=0
    for s in $sizes; do ((s > n)) && n=$s; done
else
    sizes=$n
fi
((n >= 1 && n <= 241)) || die "N must be 1..241 (lab indexes 10..250)"
out=$(mktemp -d /tmp/deploy-flake-fleet-results.XXXXXX)

(cd "$ROOT" && cargo build --release --locked -q)
bin=$ROOT/target/release/deploy-flake
bench_init
# The tool's command line on the deploying machine.
tool=("$bin")
if [ -n "$deployer" ]; then
    tool=(bash "$LAB" deployer "$deployer" "$WORK" -l "$WORK/deployer-$deployer" -b "$bin"
        -e "NIX_CONFIG=$NIX_CONFIG" -- "$bin")
    log "deploying from $deployer: $(bash "$LAB" deployer "$deployer" "$WORK" -- sh -c 'nix --version; ssh -V 2>&1' | tr '\n' ' ')"
fi
claim_indexes "$n"
boot_targets

flake=$WORK/flake
make_flake "$flake"
CFGS=()
for ((k = 0; k < n; k++)); do CFGS+=(healthy-v1); done
write_hosts "$flake" "$n"
log "baseline: healthy-v1 on $n hosts"
"${tool[@]}" --all --flake "$flake" --max-parallel 0 >"$out/baseline.log" 2>&1 ||
    die "baseline deploy failed (exit $?): $out/baseline.log"

runs=0
measure_run() { # MODE HOSTS PAR
    local mode=$1 hosts=$2 par=$3 cpu0 cpu1 l0 l1 ev
    runs=$((runs + 1))
    ev="$out/events-$runs-$mode-n$hosts-p$par.jsonl"
    cpu0=$(target_cpu_usec "$hosts")
    l0=$(logins_total "$hosts")
    python3 "$ROOT/bench/measure.py" run --out "$WORK/result.json" --events "$ev" -- \
        "${tool[@]}" "${verbose[@]}" --json --all --flake "$flake" --max-parallel "$par"
    cpu1=$(target_cpu_usec "$hosts")
    l1=$(logins_total "$hosts")
    python3 "$ROOT/bench/measure.py" merge "$WORK/result.json" mode="$mode" hosts="$hosts" \
        par="$par" deployer="\"${deployer:-here}\"" target_cpu_s="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { print (b - a) / 1e6 }')" \
        logins=$((l1 - l0)) events="\"$ev\"" >>"$out/results.jsonl"
    log "$mode, $hosts hosts, --max-parallel $par: $(tail -n 1 "$out/results.jsonl" |
        python3 -c "import json,sys; r=json.load(sys.stdin); print('%.2fs, exit %s, %s' % (r['wall'], r['exit'], r['outcomes']))")"
}

for size in $sizes; do
    for par in $parallel; do
        flip_cfgs "$size"
        ((reuse)) || set_salt "$flake" "change-$size-$par-$RANDOM"
        write_hosts "$flake" "$size"
        measure_run change "$size" "$par"
        measure_run no-op "$size" "$par"
    done
done

echo
python3 "$ROOT/bench/measure.py" fleet "$out/results.jsonl"
echo
python3 "$ROOT/bench/measure.py" phases "$out/results.jsonl" --per-run
if ((curve)); then
    echo
    python3 "$ROOT/bench/measure.py" curve "$out/results.jsonl"
fi
echo
echo "events and results: $out"
