#!/usr/bin/env bash
# The floor of a deploy: only the commands no deploy of a flake to a NixOS
# host can do without, by hand, all hosts in parallel; bench/deploy.sh
# compares deploy-flake's wall time against it.
#
# The flake is archived once (locally), then per host over ONE ssh
# connection (a ControlMaster, a single login):
#   copy      nix copy of the flake's source to the host (ssh-ng over the
#             master)
#   build     nix build of path:<source>#nixosConfigurations."<cfg>"
#             .config.system.build.toplevel on the host
#   activate  <toplevel>/bin/switch-to-configuration test
#   confirm   one fresh login (ControlPath=none) running `true`
#   boot      nix-env -p /nix/var/nix/profiles/system --set <toplevel>, then
#             <toplevel>/bin/switch-to-configuration boot
# No lock, no health checks, no self-check, no agent, no rollback: a
# deploy that does anything less is not a safe deploy, one that does
# more pays for it here.
#
#   bash bench/floor.sh FLAKE KEY KNOWN_HOSTS root@ADDR=CONFIG...
# e.g. bash bench/floor.sh /tmp/lab/flake /tmp/lab/id_ed25519 \
#          /tmp/lab/known_hosts root@10.77.42.2=healthy-v2
# Prints one line per host (seconds per step); exits 1 if any host failed.
set -euo pipefail
(($# >= 4)) || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
flake=$1 key=$2 known=$3
shift 3
ssh_opts=(-i "$key" -o "UserKnownHostsFile=$known" -o StrictHostKeyChecking=yes
    -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o LogLevel=ERROR)
nixx=(nix --extra-experimental-features 'nix-command flakes')
sockets=$(mktemp -d /tmp/deploy-flake-floor.XXXXXX)
trap 'rm -rf "$sockets"' EXIT

src=$("${nixx[@]}" flake archive --json "$flake" | sed -n 's/^{"path":"\([^"]*\)".*/\1/p')
[ -n "$src" ] || { echo "floor.sh: nix flake archive gave no path" >&2; exit 1; }

now() { date +%s.%N; }
step() { # NAME CMD...: runs CMD, appends "NAME=seconds" to $times
    local t0 rc=0
    t0=$(now)
    "${@:2}" || rc=$?
    times+=" $1=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')"
    return "$rc"
}

deploy_host() { # DEST CONFIG
    local dest=$1 cfg=$2 sock out times=""
    sock="$sockets/${dest//[^a-zA-Z0-9.]/_}"
    local mux=("${ssh_opts[@]}" -o ControlMaster=no -o "ControlPath=$sock")
    # shellcheck disable=SC2317 # the steps are called through step
    {
        master() { ssh "${ssh_opts[@]}" -o ControlMaster=yes -o "ControlPath=$sock" -o ControlPersist=yes -fN "$dest"; }
        copy() { NIX_SSHOPTS="${mux[*]}" "${nixx[@]}" copy --no-check-sigs --to "ssh-ng://$dest" "$src"; }
        build() {
            out=$(ssh "${mux[@]}" "$dest" nix --extra-experimental-features "'nix-command flakes'" \
                build --no-link --json "'path:$src#nixosConfigurations.\"$cfg\".config.system.build.toplevel'" |
                sed -n 's/.*"out":"\([^"]*\)".*/\1/p')
            [ -n "$out" ]
        }
        activate() { ssh "${mux[@]}" "$dest" "$out/bin/switch-to-configuration" test; }
        confirm() { ssh "${ssh_opts[@]}" -o ControlPath=none "$dest" true; }
        # shellcheck disable=SC2029 # the command line is meant for the host's shell
        boot() { ssh "${mux[@]}" "$dest" "nix-env -p /nix/var/nix/profiles/system --set $out && $out/bin/switch-to-configuration boot"; }
    }
    local rc=0
    step master master && step copy copy && step build build && step activate activate &&
        step confirm confirm && step boot boot || rc=$?
    ssh "${mux[@]}" -O exit "$dest" 2>/dev/null || true
    if ((rc)); then
        echo "$dest: FAILED (exit $rc) after:$times" >&3
        return "$rc"
    fi
    echo "$dest $cfg:$times" >&3
}

pids=()
for spec in "$@"; do
    k=${#pids[@]}
    deploy_host "${spec%%=*}" "${spec#*=}" 3>"$sockets/sum.$k" >"$sockets/log.$k" 2>&1 &
    pids+=($!)
done
rc=0
for k in "${!pids[@]}"; do
    if ! wait "${pids[$k]}"; then
        rc=1
        sed 's/^/  | /' "$sockets/log.$k" >&2
    fi
    cat "$sockets/sum.$k"
done
exit "$rc"
