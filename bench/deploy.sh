#!/usr/bin/env bash
# Benchmark: deploying a small change to 1, 4 and 8 lab hosts.
#
# For each fleet size N it boots N lab targets, deploys healthy-v1 once
# (not measured), then measures REPS deploys that alternate between
# healthy-v2 and healthy-v1 (a changed unit, restarted on each host):
#   - wall time of the whole run,
#   - deployer CPU time: user+sys of deploy-flake and every child it waited
#     for (nix, ssh clients), from getrusage(RUSAGE_CHILDREN),
#   - ssh logins per host per deploy, counted on the targets
#     ("Accepted publickey" in sshd's journal),
#   - the targets' own CPU time (their cgroups' usage_usec): on this machine
#     the targets share the cores with the deployer, which bounds the wall
#     time of a large fleet from below.
# Goals: N=8 within 2x of N=1 wall time; at most 2 logins per host per deploy.
#
#   bash bench/deploy.sh            (as root, after tests/prepare.sh)
#   SIZES="1 4 8" REPS=3 bash bench/deploy.sh
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
SIZES=${SIZES:-"1 4 8"}
REPS=${REPS:-3}
export NIX_CONFIG=$'substituters =\nbuild-users-group =\nsandbox = false'

cargo build --release --locked -q
bin=$PWD/target/release/deploy-flake
lab=tests/lab/lab.sh
work=$(mktemp -d /tmp/deploy-flake-bench.XXXXXX)
names=()
cleanup() {
    for n in "${names[@]}"; do bash "$lab" stop "$n" "$work" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT
bash "$lab" keygen "$work" >/dev/null

# Time and rusage of one command: prints "wall user sys".
measure() {
    python3 - "$@" <<'PY'
import os, resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wall = time.monotonic() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{wall:.2f} {ru.ru_utime:.2f} {ru.ru_stime:.2f} {r.returncode}")
PY
}

target_cpu() { # CPU seconds used so far by all targets of this benchmark
    local total=0 name
    for name in "${names[@]}"; do
        total=$((total + $(sed -n 's/^usage_usec //p' "/sys/fs/cgroup/unified/deploy-flake-lab/$name/cpu.stat")))
    done
    awk -v t="$total" 'BEGIN { printf "%.2f", t / 1e6 }'
}

logins() { # total "Accepted publickey" lines on target $1
    ssh -i "$work/id_ed25519" -o UserKnownHostsFile="$work/known_hosts" -o BatchMode=yes \
        "root@10.77.$1.2" "journalctl -q --no-pager _COMM=sshd-session _COMM=sshd | grep -c 'Accepted publickey'" || echo 0
}

printf '%-6s %-5s %10s %10s %10s %14s %16s\n' hosts rep wall_s user_s sys_s targets_cpu_s logins_per_host
declare -A wall_med
for n in $SIZES; do
    names=()
    idxs=()
    for i in $(seq 1 "$n"); do
        idx=$((199 + i)); name="bench-$idx"
        names+=("$name"); idxs+=("$idx")
    done
    for k in "${!names[@]}"; do
        bash "$lab" boot "${names[$k]}" "${idxs[$k]}" trixie "$work" >/dev/null 2>&1 &
    done
    wait
    flake="$work/flake-$n"
    rm -rf "$flake"; cp -r tests/fixtures/lab "$flake"; cp -r lib "$flake/lib"
    write_hosts() {
        {
            echo "{"
            for idx in "${idxs[@]}"; do
                echo "  h$idx = { hostname = \"10.77.$idx.2\"; configuration = \"$1\"; sshOpts = [ \"-i\" \"$work/id_ed25519\" \"-o\" \"UserKnownHostsFile=$work/known_hosts\" ]; };"
            done
            echo "}"
        } > "$flake/hosts.nix"
    }
    write_hosts healthy-v1
    "$bin" --all --flake "$flake" >/dev/null
    walls=()
    for rep in $(seq 1 "$REPS"); do
        if ((rep % 2)); then write_hosts healthy-v2; else write_hosts healthy-v1; fi
        before=0; for idx in "${idxs[@]}"; do before=$((before + $(logins "$idx"))); done
        cpu0=$(target_cpu)
        read -r wall user sys rc < <(measure "$bin" --all --flake "$flake")
        cpu1=$(target_cpu)
        [ "$rc" = 0 ] || { echo "deploy failed (exit $rc)" >&2; exit 1; }
        after=0; for idx in "${idxs[@]}"; do after=$((after + $(logins "$idx"))); done
        # The counting itself is one login per host.
        per=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN { printf "%.2f", (a - b - n) / n }')
        tcpu=$(awk -v a="$cpu1" -v b="$cpu0" 'BEGIN { printf "%.2f", a - b }')
        printf '%-6s %-5s %10s %10s %10s %14s %16s\n' "$n" "$rep" "$wall" "$user" "$sys" "$tcpu" "$per"
        walls+=("$wall")
    done
    wall_med[$n]=$(printf '%s\n' "${walls[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    for k in "${!names[@]}"; do bash "$lab" stop "${names[$k]}" "$work" >/dev/null 2>&1; done
    rm -rf "$work/targets"
    names=()
done
echo
for n in $SIZES; do
    printf 'median wall, %s host(s): %ss' "$n" "${wall_med[$n]}"
    if [ -n "${wall_med[1]:-}" ] && [ "$n" != 1 ]; then
        awk -v a="${wall_med[$n]}" -v b="${wall_med[1]}" 'BEGIN { printf "  (%.2fx of 1 host)", a / b }'
    fi
    echo
done
