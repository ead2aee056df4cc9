#!/usr/bin/env bash
# Benchmark: what one endless line costs the deployer. One lab target; an
# activation that prints one line of N bytes without a newline (then a
# normal line), for N = 0 (healthy-v2, no such line), 1 MB, 10 MB and
# 100 MB; each deploy measured by measure.py. Prints, per N, the exit
# code, the wall time and the tool's peak RSS (VmHWM), and each peak as a
# ratio of the peak without the line: bounded memory is a flat column.
#
#   bash bench/long-line.sh        (as root; BIN=... for another build)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/deploy-flake-long-line.XXXXXX)
export BENCH_PREFIX=longline
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
BIN=${BIN:-$ROOT/target/release/deploy-flake}
[ -x "$BIN" ] || die "build first: cargo build --release"

bench_init
claim_indexes 1
boot_targets
FLAKE=$WORK/flake
make_flake "$FLAKE"
idx=${IDXS[0]}
# One configuration per line length, beside the fixture's.
mv "$FLAKE/configurations.nix" "$FLAKE/configurations-salted.nix"
cat >"$FLAKE/configurations.nix" <<'EOF'
let
  base = import ./configurations-salted.nix;
  line = bytes: base.endless-line // {
    switchHook = ''
      head -c ${toString bytes} /dev/zero | tr '\000' x
      echo
      echo "after the long line"
    '';
  };
in
base // { line-1mb = line 1000000; line-10mb = line 10000000; line-100mb = line 100000000; }
EOF

hosts() { # CONFIGURATION
    cat >"$FLAKE/hosts.nix" <<EOF
{
  h = { hostname = "10.77.$idx.2"; configuration = "$1"; sshOpts = [ "-i" "$WORK/id_ed25519" "-o" "UserKnownHostsFile=$WORK/known_hosts" ]; };
}
EOF
}

hosts healthy-v1
"$BIN" --json --flake "$FLAKE" --all >/dev/null || die "baseline deploy failed"

printf '%-12s %5s %8s %12s %8s\n' line exit wall_s peak_rss_MiB ratio
base_kb=
for cfg in healthy-v2 line-1mb line-10mb line-100mb; do
    hosts "$cfg"
    python3 "$ROOT/bench/measure.py" run --out "$WORK/$cfg.json" --events "$WORK/$cfg.jsonl" -- \
        "$BIN" --json --flake "$FLAKE" --all --force >/dev/null
    read -r code wall kb < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["exit"], r["wall"], r["tool_hwm_kb"])' "$WORK/$cfg.json")
    base_kb=${base_kb:-$kb}
    printf '%-12s %5s %8.1f %12.1f %8.2f\n' "${cfg/healthy-v2/none}" "$code" "$wall" \
        "$(awk -v k="$kb" 'BEGIN { print k / 1024 }')" "$(awk -v k="$kb" -v b="$base_kb" 'BEGIN { print k / b }')"
done
