#!/usr/bin/env bash
# Times `deploy-flake --dry-run --all` over a generated 1000-host fleet
# against the floor: a bare `nix eval` of a trivial attribute of the same
# flake (Nix start-up + flake fetch), in the same hyperfine run.
#
#   bench/inventory.sh [HOSTS]        (default 1000; needs nix, hyperfine)
#
# Every nixosConfigurations value throws, so the run also proves that the
# inventory never evaluates a NixOS configuration.
set -euo pipefail

hosts=${1:-1000}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flake=$work/fleet

mkdir -p "$flake/lib"
cp -r "$repo/lib/." "$flake/lib/"
# Written out literally, as a real fleet's flake.nix is (Nix parses the
# file for the floor too).
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

(cd "$repo" && cargo build --release --quiet)
bin=$repo/target/release/deploy-flake
nixeval=(nix eval --json --extra-experimental-features 'nix-command flakes')

# Sanity: every host is planned, nothing was forced.
planned=$("$bin" --dry-run --all --flake "$flake" | grep -c '^host-')
[ "$planned" -eq "$hosts" ] || { echo "planned $planned hosts, expected $hosts" >&2; exit 1; }

json=$work/hyperfine.json
hyperfine -N --warmup 5 --runs 60 --export-json "$json" \
  -n "nix eval (floor)" "${nixeval[*]@Q} ${flake@Q}#trivial" \
  -n "deploy-flake --dry-run --all" "${bin@Q} --dry-run --all --flake ${flake@Q}"

python3 - "$json" "$hosts" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
floor, ours = r[0], r[1]
print(f"\n{sys.argv[2]} hosts:")
for stat in ("mean", "median", "min"):
    f, o = floor[stat], ours[stat]
    print(f"  {stat:6}  floor {f*1000:6.1f} ms  deploy-flake {o*1000:6.1f} ms  ratio {o/f:.2f}x")
f, o = floor["user"] + floor["system"], ours["user"] + ours["system"]
print(f"  cpu     floor {f*1000:6.1f} ms  deploy-flake {o*1000:6.1f} ms  ratio {o/f:.2f}x  (user+sys, nix child included)")
# The median: robust to other processes sharing the machine.
f, o = floor["median"], ours["median"]
print("goal (median within 2x of the floor and under 1 s):", "met" if o / f <= 2 and o < 1 else "NOT met")
PY
