# shellcheck shell=bash
# Shared by the lab benchmarks (sourced, not run): lab indexes claimed like
# the tests claim them, targets booted and stopped in parallel batches, the
# fixture flake and its hosts.nix, and what is counted on the targets.
#
# The caller sets ROOT (the repository) and WORK (a fresh directory), calls
# bench_init, and from then on every exit (normal, error, Ctrl-C, TERM)
# stops the targets, releases the claimed indexes and removes WORK.

LAB=$ROOT/tests/lab/lab.sh
CLAIMS=/run/deploy-flake-lab/claims
CG_LAB=/sys/fs/cgroup/unified/deploy-flake-lab
export NIX_CONFIG=$'substituters =\nbuild-users-group =\nsandbox = false'

NAMES=()      # booted (or booting) targets
IDXS=()       # their lab indexes (10.77.IDX.2), claimed
CLAIMED=()    # every index this run claimed
BOOT_BATCH=${BOOT_BATCH:-10}
BENCH_PREFIX=${BENCH_PREFIX:-bench}

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "$*"; exit 1; }

bench_init() {
    [ "$(id -u)" = 0 ] || die "run as root (the lab needs netns, overlays, nspawn)"
    mkdir -p "$WORK"
    trap bench_cleanup EXIT
    trap 'log interrupted; exit 130' INT
    trap 'log terminated; exit 143' TERM
    bash "$LAB" keygen "$WORK" >/dev/null
}

bench_cleanup() {
    local rc=$?
    trap '' INT TERM
    local pids
    pids=$(jobs -p)
    # shellcheck disable=SC2086 # our own background jobs (boots), by pid
    if [ -n "$pids" ]; then kill $pids 2>/dev/null || true; wait 2>/dev/null || true; fi
    stop_targets
    release_claims
    rm -rf "$WORK"
    if [ "$rc" != 0 ]; then log "exit $rc; targets stopped, claims released"; fi
}

# Claims N lab indexes from the top (250) down, skipping those held by tests
# (which claim from 10 up) or in use; the claim is a directory created
# atomically, owned by this shell, exactly as tests/common/claim.rs does it.
claim_indexes() {
    local n=$1 idx
    mkdir -p "$CLAIMS"
    IDXS=()
    for ((idx = 250; idx >= 10 && ${#IDXS[@]} < n; idx--)); do
        [ ! -e "/sys/class/net/dfl$idx" ] || continue
        mkdir "$CLAIMS/$idx" 2>/dev/null || continue
        echo $$ >"$CLAIMS/$idx/owner"
        CLAIMED+=("$idx")
        IDXS+=("$idx")
    done
    ((${#IDXS[@]} == n)) || die "only ${#IDXS[@]} of $n lab indexes are free"
}

release_claims() {
    local idx
    for idx in "${CLAIMED[@]}"; do
        [ "$(cat "$CLAIMS/$idx/owner" 2>/dev/null)" = $$ ] && rm -rf "${CLAIMS:?}/$idx"
    done
    CLAIMED=()
}

# Every target's systemd and D-Bus take about six inotify instances, and
# all targets count against root's one fs.inotify.max_user_instances (128 by
# default: about 20 targets). Past it, units in the targets fail with "Too
# many open files" (boots fail, activations report failed .path units).
# Raised here for N more targets, with room for others' lab runs; left
# raised, since other targets may depend on it by then.
ensure_inotify() {
    local n=$1 cur want
    cur=$(sysctl -n fs.inotify.max_user_instances)
    want=$((1024 + 16 * n))
    if ((cur < want)); then
        sysctl -q -w fs.inotify.max_user_instances="$want"
        log "raised fs.inotify.max_user_instances from $cur to $want (for $n targets)"
    fi
}

# Boots one target per claimed index, BOOT_BATCH at a time, trixie.
boot_targets() {
    local k idx name failed=0 t0=$SECONDS
    ensure_inotify "${#IDXS[@]}"
    NAMES=()
    for idx in "${IDXS[@]}"; do NAMES+=("$BENCH_PREFIX-$idx"); done
    for k in "${!IDXS[@]}"; do
        idx=${IDXS[$k]} name=${NAMES[$k]}
        bash "$LAB" boot "$name" "$idx" trixie "$WORK" >"$WORK/boot-$name.log" 2>&1 &
        if (((k + 1) % BOOT_BATCH == 0)); then wait_all || failed=1; fi
    done
    wait_all || failed=1
    if ((failed)); then
        for name in "${NAMES[@]}"; do
            grep -q ' running: boot ' "$WORK/boot-$name.log" || sed "s/^/$name: /" "$WORK/boot-$name.log" >&2
        done
        die "some targets did not boot"
    fi
    log "booted ${#NAMES[@]} targets in $((SECONDS - t0))s"
}

wait_all() { # waits for every background job; false if any failed
    local rc=0 pid
    for pid in $(jobs -p); do wait "$pid" || rc=1; done
    return "$rc"
}

stop_targets() {
    local k
    ((${#NAMES[@]})) || return 0
    for k in "${!NAMES[@]}"; do
        bash "$LAB" stop "${NAMES[$k]}" "$WORK" >/dev/null 2>&1 &
        if (((k + 1) % BOOT_BATCH == 0)); then wait_all || true; fi
    done
    wait_all || true
    # (what stop leaves: the overlay's upper layer, the console log)
    for k in "${!NAMES[@]}"; do rm -rf "${WORK:?}/targets/${NAMES[$k]}"; done
    NAMES=()
}

# The fixture flake with lib/ and a configurations.nix that salts
# healthy-v1 and healthy-v2 with salt.nix: a new salt makes new toplevels
# (a build on every target), the same salt the same ones.
make_flake() {
    local flake=$1
    rm -rf "$flake"
    cp -r "$ROOT/tests/fixtures/lab" "$flake"
    cp -r "$ROOT/lib" "$flake/lib"
    mv "$flake/configurations.nix" "$flake/configurations-fixture.nix"
    cat >"$flake/configurations.nix" <<'EOF'
let
  base = import ./configurations-fixture.nix;
  salt = import ./salt.nix;
in
base // {
  healthy-v1 = base.healthy-v1 // { inherit salt; };
  healthy-v2 = base.healthy-v2 // { inherit salt; };
}
EOF
    set_salt "$flake" base
}

set_salt() { printf '"%s"\n' "$2" >"$1/salt.nix"; }

# hosts.nix: host h<IDX> at 10.77.IDX.2 runs CFGS[k] for the first N of IDXS.
# CFGS (an array of configuration names, one per index) is the caller's.
# SSH_OPTS: more "-o" options for every host (e.g. KexAlgorithms=...).
SSH_OPTS=()
write_hosts() {
    local flake=$1 n=$2 k idx extra="" o
    for o in "${SSH_OPTS[@]}"; do extra+=" \"-o\" \"$o\""; done
    {
        echo "{"
        for ((k = 0; k < n; k++)); do
            idx=${IDXS[$k]}
            printf '  h%s = { hostname = "10.77.%s.2"; configuration = "%s"; sshOpts = [ "-i" "%s" "-o" "UserKnownHostsFile=%s"%s ]; };\n' \
                "$idx" "$idx" "${CFGS[$k]}" "$WORK/id_ed25519" "$WORK/known_hosts" "$extra"
        done
        echo "}"
    } >"$flake/hosts.nix"
}

flip_cfgs() { # the first N hosts get the other of healthy-v1/healthy-v2
    local n=$1 k
    for ((k = 0; k < n; k++)); do
        if [ "${CFGS[$k]}" = healthy-v1 ]; then CFGS[k]=healthy-v2; else CFGS[k]=healthy-v1; fi
    done
}

# CPU time (microseconds) the first N targets' cgroups used so far: every
# process of the container, its nspawn supervisor and launcher.
target_cpu_usec() {
    local n=$1 k total=0
    for ((k = 0; k < n; k++)); do
        total=$((total + $(sed -n 's/^usage_usec //p' "$CG_LAB/${NAMES[$k]}/cpu.stat")))
    done
    echo "$total"
}

# ssh logins accepted so far by the first N targets, read from each
# target's persistent journal from this side (no login of our own).
logins_total() {
    local n=$1 k total=0 c
    for ((k = 0; k < n; k++)); do
        c=$(journalctl -q --no-pager -D "$WORK/targets/${NAMES[$k]}/merged/var/log/journal" \
            _COMM=sshd-session _COMM=sshd 2>/dev/null | grep -c 'Accepted publickey' || true)
        total=$((total + c))
    done
    echo "$total"
}
