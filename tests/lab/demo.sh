#!/usr/bin/env bash
# The demo: a small fleet of lab targets (one of each suite: trixie, sid,
# bookworm) and deploy-flake run against a fixture flake that describes
# them: the plan, a real deploy of all three, a second run with nothing to
# do, and a broken change to one host that is rolled back by itself.
#
#   tests/lab/demo.sh                 (as root; installs what it needs first)
#
# DEPLOY_FLAKE_BIN selects the binary (default: `cargo build --release`, so
# that the binary matches lib/). The targets are stopped when
# the demo ends, however it ends.
set -euo pipefail

# The main deploy: `deploy-flake "${DEMO_ARGS[@]}" --flake <fleet>`.
DEMO_ARGS=(--all)

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
root=$(dirname "$(dirname "$here")")
lab="$here/lab.sh"
claims=/run/deploy-flake-lab/claims

die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }
say() { printf '\n==> %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || die "the lab needs root"
bash "$root/tests/prepare.sh"
export NIX_CONFIG=$'substituters =\nbuild-users-group =\nsandbox = false'
export PATH="$HOME/.cargo/bin:$PATH"

bin=${DEPLOY_FLAKE_BIN:-}
if [ -z "$bin" ]; then
    # Always through cargo: a stale binary would not match lib/.
    say "building deploy-flake (cargo build --release)"
    (cd "$root" && cargo build --release --quiet)
    bin="$root/target/release/deploy-flake"
fi
[ -x "$bin" ] || die "no deploy-flake binary at $bin"

labdir=$(mktemp -d /tmp/deploy-flake-demo.XXXXXX)
names=()
idxs=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    say "stopping the targets"
    local i
    for i in "${!names[@]}"; do
        "$lab" stop "${names[$i]}" "$labdir" &
    done
    wait || true
    for i in "${idxs[@]}"; do rm -rf "${claims:?}/$i"; done
    if grep -q " $labdir/" /proc/self/mounts; then
        printf 'demo.sh: keeping %s (still mounted below it)\n' "$labdir" >&2
    else
        rm -rf "$labdir"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Indexes (10.77.IDX.0/24) are claimed like the Rust harness does, so the
# demo can run next to the tests.
claim() {
    mkdir -p "$claims"
    local idx
    for idx in $(seq 10 250); do
        if mkdir "$claims/$idx" 2>/dev/null; then
            echo $$ >"$claims/$idx/owner"
            echo "$idx"
            return 0
        fi
    done
    die "no free lab index in $claims"
}

hosts=(web1 web2 db1)
suites=(trixie sid bookworm)
configs=(healthy-v2 healthy-v2 healthy-v1)
tags=(web web db)

"$lab" keygen "$labdir" >/dev/null
say "booting ${#hosts[@]} targets"
start=$SECONDS
pids=()
for i in "${!hosts[@]}"; do
    idx=$(claim)
    idxs+=("$idx")
    names+=("demo-$$-$idx")
    "$lab" boot "demo-$$-$idx" "$idx" "${suites[$i]}" "$labdir" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || die "a target did not boot (see above)"; done
printf 'demo.sh: %s targets running after %ss\n' "${#hosts[@]}" "$((SECONDS - start))" >&2

flake="$labdir/fleet"
cp -r "$root/tests/fixtures/lab" "$flake"
cp -r "$root/lib" "$flake/lib"
rm -f "$flake/flake.lock"
write_hosts() {
    {
        echo "{"
        for i in "${!hosts[@]}"; do
            printf '  %s = {\n' "${hosts[$i]}"
            printf '    hostname = "10.77.%s.2";\n' "${idxs[$i]}"
            printf '    configuration = "%s";\n' "${configs[$i]}"
            printf '    tags = [ "%s" "%s" ];\n' "${tags[$i]}" "${suites[$i]}"
            printf '    sshOpts = [ "-i" "%s" "-o" "UserKnownHostsFile=%s" ];\n' \
                "$labdir/id_ed25519" "$labdir/known_hosts"
            printf '  };\n'
        done
        echo "}"
    } >"$flake/hosts.nix"
}
write_hosts
say "fleet flake $flake"
cat "$flake/hosts.nix" >&2

say "the plan: deploy-flake --dry-run --all"
"$bin" --dry-run --all --flake "$flake"

say "deploy: deploy-flake ${DEMO_ARGS[*]}"
"$bin" "${DEMO_ARGS[@]}" --flake "$flake"

say "again: every host is up to date, nothing is activated"
"$bin" --all --flake "$flake"

say "a broken change to web2 (a unit fails to start): rolled back by itself, boot entry untouched"
configs[1]=failing-unit
write_hosts
rc=0
"$bin" web2 --flake "$flake" || rc=$?
printf 'demo.sh: deploy-flake exited with %s (1: a host failed, every host in a known state)\n' "$rc" >&2
[ "$rc" = 1 ] || die "expected exit code 1 from the broken change"

say "what each host runs and boots now"
for i in "${!hosts[@]}"; do
    printf '%-5s running %s, booting %s\n' "${hosts[$i]}" \
        "$("$lab" ssh "${names[$i]}" "$labdir" readlink /run/current-system)" \
        "$("$lab" ssh "${names[$i]}" "$labdir" readlink -f /nix/var/nix/profiles/system)"
done
