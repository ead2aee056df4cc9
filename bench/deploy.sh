#!/usr/bin/env bash
# Benchmark: deploying a small change to 1, 4 and 8 lab hosts, and to 3
# hosts against the floor (bench/floor.sh).
#
# For each fleet size N it boots N lab targets, deploys healthy-v1 once
# (not measured), then measures REPS deploys that alternate between
# healthy-v2 and healthy-v1 with a new salt each time (a new toplevel,
# built on each host; a changed unit, restarted on each host):
#   - wall time of the whole run,
#   - deployer CPU time: user+sys of deploy-flake's whole process tree (nix,
#     ssh clients and the daemonized ssh masters), from a cgroup of its own
#     (bench/measure.py),
#   - ssh logins per host per deploy, counted on the targets
#     ("Accepted publickey" in sshd's journal, read from this side),
#   - the targets' own CPU time (their cgroups' usage_usec): on this machine
#     the targets share the cores with the deployer, which bounds the wall
#     time of a large fleet from below,
#   - the CPU time other work on this machine took during the run
#     (other_cpu_s: the machine's busy time less the two above),
#   - the median duration of each phase across hosts and reps (the --json
#     phase-finished events).
# Then, on FLOOR_HOSTS (3) hosts, FLOOR_REPS pairs of change deploys,
# alternately by deploy-flake and by bench/floor.sh (the commands a deploy
# cannot do without, over one ssh connection per host, plus the fresh
# confirmation login): the ratio of their median wall times.
# Goals: N=8 within 2x of N=1 wall time; at most 2 logins per host per
# deploy; deploy-flake within 1.15x of the floor.
#
#   bash bench/deploy.sh            (as root, after tests/prepare.sh)
#   SIZES="1 4 8" REPS=3 FLOOR_HOSTS=3 FLOOR_REPS=5 bash bench/deploy.sh
#   SIZES= OTHER_BIN=/path/to/deploy-flake bash bench/deploy.sh
#       only the floor comparison, with another build of deploy-flake as a
#       third contender in each rep (e.g. a change to the tool against the
#       committed one)
set -euo pipefail
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
WORK=$(mktemp -d /tmp/deploy-flake-bench.XXXXXX)
BENCH_PREFIX=bench
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
SIZES=${SIZES-"1 4 8"}
REPS=${REPS:-3}
FLOOR_HOSTS=${FLOOR_HOSTS:-3}
FLOOR_REPS=${FLOOR_REPS:-5}

(cd "$ROOT" && cargo build --release --locked -q)
bin=$ROOT/target/release/deploy-flake
measure=$ROOT/bench/measure.py
bench_init
results=$WORK/results.jsonl
flake=$WORK/flake
make_flake "$flake"

up() { # N: claim, boot and baseline N targets at healthy-v1
    local n=$1 k
    claim_indexes "$n"
    boot_targets
    CFGS=()
    for ((k = 0; k < n; k++)); do CFGS+=(healthy-v1); done
    set_salt "$flake" "base-$RANDOM"
    write_hosts "$flake" "$n"
    "$bin" --all --flake "$flake" >"$WORK/baseline.log" 2>&1 ||
        { cat "$WORK/baseline.log" >&2; die "baseline deploy failed"; }
}
down() { stop_targets; release_claims; }

next_change() { # N: the hosts get the other configuration, newly salted
    local k
    # Deploys follow each other faster than systemd lets a unit restart
    # (StartLimitBurst: 5 starts in 10 s, then start-limit-hit): clear the
    # count between runs (this login falls outside every measured window)
    # so that no run pays for its predecessors' restarts.
    for ((k = 0; k < $1; k++)); do
        ssh -i "$WORK/id_ed25519" -o "UserKnownHostsFile=$WORK/known_hosts" -o BatchMode=yes \
            -o LogLevel=ERROR "root@10.77.${IDXS[$k]}.2" systemctl reset-failed demo-web.service &
    done
    wait
    flip_cfgs "$1"
    set_salt "$flake" "change-$RANDOM$RANDOM"
    write_hosts "$flake" "$1"
}

run_measured() { # WHO N REP CMD...: one measured run, appended to $results
    local who=$1 n=$2 rep=$3 cpu0 cpu1 l0 l1
    shift 3
    cpu0=$(target_cpu_usec "$n")
    l0=$(logins_total "$n")
    python3 "$measure" run --out "$WORK/r.json" --events "$WORK/events-$who-$n-$rep.jsonl" -- "$@"
    cpu1=$(target_cpu_usec "$n")
    l1=$(logins_total "$n")
    python3 "$measure" merge "$WORK/r.json" who="$who" mode=change hosts="$n" rep="$rep" \
        target_cpu_s="$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { print (b - a) / 1e6 }')" \
        logins=$((l1 - l0)) events="\"$WORK/events-$who-$n-$rep.jsonl\"" >>"$results"
    [ "$(tail -n 1 "$results" | python3 -c 'import json,sys; print(json.load(sys.stdin)["exit"])')" = 0 ] ||
        { cat "$WORK/events-$who-$n-$rep.jsonl.stderr" >&2; python3 "$measure" failures "$WORK/events-$who-$n-$rep.jsonl" >&2
          die "$who: deploy to $n host(s) failed"; }
}

if [ -n "$SIZES" ]; then
    printf '%-6s %-5s %10s %10s %10s %14s %16s %12s\n' hosts rep wall_s user_s sys_s targets_cpu_s logins_per_host other_cpu_s
fi
for n in $SIZES; do
    up "$n"
    for rep in $(seq 1 "$REPS"); do
        next_change "$n"
        run_measured tool "$n" "$rep" "$bin" --json --all --flake "$flake"
        tail -n 1 "$results" | python3 -c 'import json, sys
r = json.load(sys.stdin)
print("%-6s %-5s %10.2f %10.2f %10.2f %14.2f %16.2f %12.2f" % (r["hosts"], r["rep"], r["wall"], r["user_s"],
      r["sys_s"], r["target_cpu_s"], r["logins"] / r["hosts"],
      max(0, r["host_busy_s"] - r["cpu_s"] - r["target_cpu_s"])))'
    done
    down
done

if [ -n "$SIZES" ]; then
echo
python3 - "$results" "$SIZES" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {}
for n in map(int, sys.argv[2].split()):
    med[n] = statistics.median(r["wall"] for r in rows if r["who"] == "tool" and r["hosts"] == n)
    ratio = f"  ({med[n] / med[1]:.2f}x of 1 host)" if 1 in med and n != 1 else ""
    print(f"median wall, {n} host(s): {med[n]:.2f}s{ratio}")
PY
echo
python3 "$measure" phases "$results"
fi

# deploy-flake against the floor, alternately, on the same hosts.
echo
up "$FLOOR_HOSTS"
for rep in $(seq 1 "$FLOOR_REPS"); do
    next_change "$FLOOR_HOSTS"
    run_measured tool-vs-floor "$FLOOR_HOSTS" "$rep" "$bin" --json --all --flake "$flake"
    if [ -n "${OTHER_BIN:-}" ]; then
        next_change "$FLOOR_HOSTS"
        run_measured other "$FLOOR_HOSTS" "$rep" "$OTHER_BIN" --json --all --flake "$flake"
    fi
    next_change "$FLOOR_HOSTS"
    specs=()
    for ((k = 0; k < FLOOR_HOSTS; k++)); do specs+=("root@10.77.${IDXS[$k]}.2=${CFGS[$k]}"); done
    run_measured floor "$FLOOR_HOSTS" "$rep" bash "$ROOT/bench/floor.sh" "$flake" \
        "$WORK/id_ed25519" "$WORK/known_hosts" "${specs[@]}"
done
down
python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
tool = [r for r in rows if r["who"] == "tool-vs-floor"]
floor = [r for r in rows if r["who"] == "floor"]
n = tool[0]["hosts"]
other = lambda r: max(0, r["host_busy_s"] - r["cpu_s"] - r["target_cpu_s"])
print(f"{n} hosts, alternately: %-4s %11s %11s %6s %10s %10s %10s %10s %9s %9s %10s %10s" % (
    "rep", "tool_wall_s", "floor_wall", "ratio", "tool_cpu_s", "floor_cpu", "tool_tgt_s", "floor_tgt",
    "tool_lg/h", "floor_lg", "tool_oth_s", "floor_oth"))
for t, f in zip(tool, floor):
    print(" " * 21 + "%-4s %11.2f %11.2f %6.2f %10.2f %10.2f %10.2f %10.2f %9.2f %9.2f %10.2f %10.2f" % (
        t["rep"], t["wall"], f["wall"], t["wall"] / f["wall"], t["cpu_s"], f["cpu_s"],
        t["target_cpu_s"], f["target_cpu_s"], t["logins"] / n, f["logins"] / n, other(t), other(f)))
print("(cpu: the deployer's process tree; tgt: the targets' CPU; lg/h: logins per host; oth: CPU "
      "seconds other work on this machine took during the run)")
mt, mf = statistics.median(r["wall"] for r in tool), statistics.median(r["wall"] for r in floor)
print(f"median wall: deploy-flake {mt:.2f}s, floor {mf:.2f}s: {mt / mf:.2f}x the floor (goal: at most 1.15x)")
pairs = [t["wall"] / f["wall"] for t, f in zip(tool, floor)]
quiet = [t["wall"] / f["wall"] for t, f in zip(tool, floor) if other(t) < 0.5 and other(f) < 0.5]
print(f"median of the per-rep ratios: {statistics.median(pairs):.2f}x; in the {len(quiet)} rep(s) where "
      "other work took under 0.5 CPU-s in both runs: " +
      (f"{statistics.median(quiet):.2f}x" if quiet else "none"))
alt = [r for r in rows if r["who"] == "other"]
if alt:
    ma = statistics.median(r["wall"] for r in alt)
    print("OTHER_BIN, by rep: " + " ".join(f"{r['wall']:.2f}" for r in alt) +
          f"; median {ma:.2f}s: {ma / mf:.2f}x the floor; CPU {statistics.median(r['cpu_s'] for r in alt):.2f}s, "
          f"targets {statistics.median(r['target_cpu_s'] for r in alt):.2f}s")
    ph = {}
    for r in alt:
        for k, v in r["phases"].items():
            ph.setdefault(k, []).extend(v)
    print("OTHER_BIN, median ms per phase: " + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in ph.items()))
steps = {}
for r in floor:  # floor.sh prints "DEST CONFIG: master=S copy=S ..." per host
    for line in open(r["events"]):
        for kv in line.split(":", 1)[-1].split():
            k, v = kv.split("=")
            steps.setdefault(k, []).append(float(v) * 1000)
print("floor, median ms per step across hosts and reps: " +
      ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in steps.items()))
phases = {}
for r in tool:
    for k, v in r["phases"].items():
        phases.setdefault(k, []).extend(v)
print("deploy-flake, median ms per phase (same runs):   " +
      ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in phases.items()))
PY
