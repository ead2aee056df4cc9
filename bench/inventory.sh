#!/usr/bin/env bash
# Times `deploy-flake --dry-run --all` over generated fleets against the
# floor: a bare `nix eval` of a trivial attribute of the same flake (Nix
# start-up, flake fetch, parsing flake.nix), in the same hyperfine run.
#
#   bench/inventory.sh [HOSTS...]     (default: 1000 10000; needs nix, hyperfine)
#
# Goals, as ratios of medians within one run: 1000 hosts within 1.5x of
# the floor, 10,000 hosts within 2x.
#
# Beside the two, the same run times what the tool's evaluation is made of,
# for the breakdown printed after the ratios:
#   eval   `nix eval` forcing every host of lib's compact view (which checks
#          it) without printing it: the floor plus lib's evaluation;
#   print  `nix eval --json` of the compact view, as the tool runs it: the
#          above plus Nix printing it;
#   tool   deploy-flake --dry-run --all: the above plus the tool's own work
#          (parsing and checking, selecting, rendering the plan).
# hyperfine times each command's runs one after the other, so a busy spell
# of a shared machine can fall on one of them only: the goal is judged on
# BENCH_PAIRS (default 40) floor/tool pairs run back to back instead (the
# median of the pairs' ratios). Medians and minimums are both shown, and
# BENCH_CALLGRIND=1 adds instruction counts (valgrind), which noise does not
# move: of the floor, of `print`, and of the tool's own process, split into
# the thread that reads and checks the inventory while Nix prints it, the
# plan's rendering and the selection.
#
#   BENCH_RUNS=N (default 40)   BENCH_PAIRS=N (default 40)   BENCH_CALLGRIND=1
#
# Every nixosConfigurations value throws, so the run also proves that the
# inventory never evaluates a NixOS configuration.
set -euo pipefail

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000)
runs=${BENCH_RUNS:-40}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A fleet of $1 hosts in $2, written out literally as a real fleet's
# flake.nix is (Nix parses the file for the floor too).
write_fleet() {
  local hosts=$1 flake=$2
  mkdir -p "$flake/lib"
  cp -r "$repo/lib/." "$flake/lib/"
  {
    echo '{'
    echo '  outputs = { self }: {'
    echo '    trivial = 1;'
    echo '    nixosConfigurations = {'
    for ((i = 0; i < hosts; i++)); do
      echo "      host-$i = throw \"host-$i was evaluated\";"
    done
    echo '    };'
    echo '    deployFlake = (import ./lib).mkDeployFlake {'
    echo '      inherit self;'
    echo '      defaults = { sshUser = "deploy"; timeouts.build = 7200; };'
    echo '      hosts = {'
    for ((i = 0; i < hosts; i++)); do
      echo "        host-$i = { hostname = \"10.$((i / 65536 % 256)).$((i / 256 % 256)).$((i % 256))\"; tags = [ \"rack-$((i / 40))\" ]; };"
    done
    echo '      };'
    echo '    };'
    echo '  };'
    echo '}'
  } >"$flake/flake.nix"
}

(cd "$repo" && cargo build --release --quiet)
bin=$repo/target/release/deploy-flake
nixeval=(nix eval --json --extra-experimental-features 'nix-command flakes')
apply=$(sed -n 's/^pub const EVAL_APPLY: &str = "\(.*\)";$/\1/p' "$repo/src/inventory.rs")
[ -n "$apply" ] || { echo "EVAL_APPLY not found in src/inventory.rs" >&2; exit 1; }
force="d: let c = ($apply) d; in builtins.deepSeq c.defaults (builtins.all builtins.isAttrs (builtins.attrValues c.hosts))"

# Instructions of a command (valgrind; children not followed).
instructions() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 >/dev/null |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

# Instructions of the tool's process, then of the functions named (0 when
# inlined away): the inventory's reading thread, the plan, the selection.
tool_instructions() {
  local out=$work/callgrind.out
  valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >/dev/null 2>&1
  callgrind_annotate --inclusive=yes "$out" 2>/dev/null | awk '
    /PROGRAM TOTALS/ { total = $1 }
    /deploy_flake::inventory::stream::read \[|BlockingTask<T> as core::future::future::Future>::poll/ {
      n = $1; gsub(",", "", n); if (n + 0 > reading + 0) reading = n }
    /deploy_flake::plan::render \[/ { plan = $1 }
    /deploy_flake::select::select \[/ { select = $1 }
    END { gsub(",", "", total); gsub(",", "", reading); gsub(",", "", plan); gsub(",", "", select)
          print total + 0, reading + 0, plan + 0, select + 0 }'
}

for hosts in "${sizes[@]}"; do
  flake=$work/fleet-$hosts
  write_fleet "$hosts" "$flake"

  # Sanity: every host is planned, nothing was forced.
  planned=$("$bin" --dry-run --all --flake "$flake" | grep -c '^host-')
  [ "$planned" -eq "$hosts" ] || { echo "planned $planned hosts, expected $hosts" >&2; exit 1; }

  json=$work/hyperfine-$hosts.json
  hyperfine -N --warmup 5 --runs "$runs" --export-json "$json" \
    -n "floor: nix eval #trivial" "${nixeval[*]@Q} ${flake@Q}#trivial" \
    -n "eval: nix eval, every host forced" \
    "${nixeval[*]@Q} ${flake@Q}#deployFlake --apply ${force@Q}" \
    -n "print: nix eval, compact view printed" "${nixeval[*]@Q} ${flake@Q}#deployFlake --apply ${apply@Q}" \
    -n "tool: deploy-flake --dry-run --all" "${bin@Q} --dry-run --all --flake ${flake@Q}" \
    >"$work/hyperfine-$hosts.txt"

  callgrind=()
  if [ "${BENCH_CALLGRIND:-}" = 1 ]; then
    # shellcheck disable=SC2207
    callgrind=(
      "$(instructions "${nixeval[@]}" "$flake#trivial")"
      "$(instructions "${nixeval[@]}" "$flake#deployFlake" --apply "$apply")"
      $(tool_instructions "$bin" --dry-run --all --flake "$flake")
    )
  fi

  pairs=$work/pairs-$hosts.json
  python3 - "$pairs" "${BENCH_PAIRS:-40}" "$bin" "$flake" "${nixeval[@]}" <<'PY'
import json, subprocess, sys, time
out, n, tool, flake, nix = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
floor_cmd, tool_cmd = nix + [flake + "#trivial"], [tool, "--dry-run", "--all", "--flake", flake]
def run(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t
for _ in range(3):
    run(floor_cmd), run(tool_cmd)
json.dump([(run(floor_cmd), run(tool_cmd)) for _ in range(n)], open(out, "w"))
PY

  python3 - "$json" "$hosts" "$pairs" "${callgrind[@]}" <<'PY'
import json, statistics, sys
r = json.load(open(sys.argv[1]))["results"]
hosts = int(sys.argv[2])
pairs = json.load(open(sys.argv[3]))
floor, ev, pr, tool = r
ms = lambda s: f"{s * 1000:7.1f} ms"
goal = 1.5 if hosts <= 1000 else 2.0
ratios = [t / f for f, t in pairs]
ratio = statistics.median(ratios)
fs, ts = [f for f, _ in pairs], [t for _, t in pairs]
print(f"\n{hosts} hosts, {len(pairs)} floor/tool pairs run back to back:")
print(f"  median  floor {ms(statistics.median(fs))}  deploy-flake {ms(statistics.median(ts))}  ratio {statistics.median(ts) / statistics.median(fs):.2f}x")
print(f"  min     floor {ms(min(fs))}  deploy-flake {ms(min(ts))}  ratio {min(ts) / min(fs):.2f}x")
print(f"  the pairs' ratios: median {ratio:.2f}x, lowest {min(ratios):.2f}x, highest {max(ratios):.2f}x")
print(f"  goal (median ratio within {goal}x of the floor): {'met' if ratio <= goal else 'NOT met'} ({ratio:.2f}x)")
print(f"{hosts} hosts, hyperfine ({len(floor['times'])} runs of each command in turn):")
for stat in ("median", "mean", "min"):
    print(f"  {stat:6}  floor {ms(floor[stat])}  deploy-flake {ms(tool[stat])}  ratio {tool[stat] / floor[stat]:.2f}x")
cpu = lambda x: x["user"] + x["system"]
print(f"  cpu     floor {ms(cpu(floor))}  deploy-flake {ms(cpu(tool))}  ratio {cpu(tool) / cpu(floor):.2f}x  (user+sys, mean, nix child included)")
print("  breakdown (differences of medians, of minimums, of user+sys means; over the floor's):")
steps = [
    ("floor (nix start-up, flake, flake.nix)", None, floor),
    ("lib: evaluating and checking each host", floor, ev),
    ("nix: printing it as JSON", ev, pr),
    ("deploy-flake: parse, check, select, plan", pr, tool),
]
for name, before, after in steps:
    cells = []
    for get in (lambda x: x["median"], lambda x: x["min"], cpu):
        d = get(after) - (get(before) if before else 0)
        cells.append(f"{ms(d)} {d / get(floor):+.2f}x")
    print(f"    {name:42} " + "   ".join(cells))
if len(sys.argv) > 4:
    f, p, t, reading, plan, select = (int(x) for x in sys.argv[4:10])
    mi = lambda n: f"{n / 1e6:8.1f} M {n / f:5.2f}x"
    print("  instructions (callgrind; over the floor's):")
    print(f"    floor                                      {mi(f)}")
    print(f"    nix eval of the compact view, over it      {mi(p - f)}  ({(p - f) / hosts:,.0f} a host, lib's start included)")
    print(f"    deploy-flake's process                     {mi(t)}  ({t / hosts:,.0f} a host)")
    print(f"      reading, checking (beside nix)           {mi(reading)}")
    print(f"      selecting the hosts                      {mi(select)}")
    print(f"      rendering the plan                       {mi(plan)}")
    print(f"      the rest (start, spawn, exit)            {mi(t - reading - select - plan)}")
    print(f"    together {(p + t) / f:.2f}x the floor; without the reading beside nix {(p + t - reading) / f:.2f}x")
PY
done
