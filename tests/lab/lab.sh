#!/usr/bin/env bash
# The lab: real systemd + Nix + sshd targets in containers on this machine.
#
#   lab.sh keygen DIR                      ssh key of a lab (DIR/id_ed25519)
#   lab.sh boot NAME IDX SUITE LABDIR      boot target NAME at 10.77.IDX.2
#   lab.sh stop NAME LABDIR                stop it and remove what it used
#   lab.sh reboot NAME LABDIR              `systemctl reboot` inside, wait
#   lab.sh ssh NAME LABDIR [CMD...]        ssh as root into a booted target
#   lab.sh link NAME_A NAME_B LABDIR       a direct link between two targets:
#                                          each reaches the other's 10.77.IDX.2
#   lab.sh leaks [FILTER]                  list leftovers; exit 1 if any
#                                          (FILTER: only those mentioning it)
#   lab.sh reap                            stop targets of dead test runs
#   lab.sh deployer SUITE LABDIR [OPTIONS] -- CMD...
#                                          run CMD on a deploying machine of
#                                          SUITE (see cmd_deployer)
#
# A target is a systemd-nspawn container booted from an overlay over the
# cached root file system (rootfs.sh): every boot of a new target starts
# pristine and all targets share one tree. Each has its own network
# namespace (host end 10.77.IDX.1, target end host0 = 10.77.IDX.2), its own
# machine-id, hostname and ssh host key. A launcher loop restarts nspawn when
# the target reboots (exit code 133), so state survives a reboot; a target
# whose /etc/lab-no-return exists stays down instead (a host that never comes
# back from a reboot). Everything a
# target uses is recorded in LABDIR/targets/NAME and under
# /run/deploy-flake-lab/targets/NAME, which `stop` and `leaks` rely on.
#
# The host has no systemd and no D-Bus: nspawn runs with --register=no and
# --keep-unit, from a cgroup of its own in both the name=systemd and unified
# hierarchies (two targets in one cgroup would share it).
set -euo pipefail

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
self="$here/lab.sh"
RUN=/run/deploy-flake-lab
CGROUP_LAB=deploy-flake-lab
CG_V1=/sys/fs/cgroup/systemd/$CGROUP_LAB
CG_V2=/sys/fs/cgroup/unified/$CGROUP_LAB
BOOT_TIMEOUT=${DEPLOY_FLAKE_LAB_BOOT_TIMEOUT:-90}
STOP_TIMEOUT=${DEPLOY_FLAKE_LAB_STOP_TIMEOUT:-20}

die() { printf 'lab.sh: %s\n' "$*" >&2; exit 1; }
log() { printf 'lab.sh: %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

check_name() {
    [[ $1 =~ ^[a-z0-9][a-z0-9-]{0,30}$ ]] ||
        die "bad target name '$1' (lower-case letters, digits, '-'; at most 31)"
}
check_idx() {
    if ! [[ $1 =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > 254)); then
        die "bad index '$1' (1..254: the target gets 10.77.IDX.2)"
    fi
}

need_root() {
    [ "$(id -u)" = 0 ] || die "the lab needs root (overlay mounts, netns, nspawn)"
    local missing=()
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v ssh >/dev/null || missing+=(openssh-client)
    command -v ip >/dev/null || missing+=(iproute2)
    ((${#missing[@]} == 0)) ||
        die "missing tools: apt-get install -y --no-install-recommends ${missing[*]}"
    if [ ! -d /sys/fs/cgroup/systemd ] || [ ! -d /sys/fs/cgroup/unified ]; then
        die "the lab expects the hybrid cgroup layout (/sys/fs/cgroup/systemd and /sys/fs/cgroup/unified)"
    fi
}

# ssh options every lab connection uses: the lab key, the lab's known_hosts,
# strict host key checking, never a prompt.
ssh_opts() {
    local labdir=$1
    printf '%s\n' -i "$labdir/id_ed25519" \
        -o "UserKnownHostsFile=$labdir/known_hosts" -o StrictHostKeyChecking=yes \
        -o BatchMode=yes -o ConnectTimeout=3 -o ServerAliveInterval=2 \
        -o ServerAliveCountMax=3 -o LogLevel=ERROR
}
lab_ssh() {
    local labdir=$1 addr=$2
    shift 2
    local opts
    mapfile -t opts < <(ssh_opts "$labdir")
    # shellcheck disable=SC2029 # the command line is meant for the target's shell
    ssh "${opts[@]}" "root@$addr" "$@"
}

cmd_keygen() {
    local dir=$1
    mkdir -p "$dir"
    (
        flock 7 # parallel boots into one new LABDIR make one key
        [ -f "$dir/id_ed25519" ] ||
            ssh-keygen -q -t ed25519 -N '' -C deploy-flake-lab -f "$dir/id_ed25519"
        touch "$dir/known_hosts"
    ) 7>"$dir/.keygen.lock"
    printf '%s\n' "$dir/id_ed25519"
}

pid_is() { # PID COMM: true when PID is alive and runs COMM
    [ -n "$1" ] && [ -r "/proc/$1/comm" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}

# Anything already using this target's name or subnet makes the new target
# unreachable in confusing ways (a stale veth silently steals the route).
refuse_stale() {
    local name=$1 idx=$2
    if ip netns list | awk '{print $1}' | grep -qx -- "$name"; then
        die "network namespace '$name' already exists (stale target? run: lab.sh leaks)"
    fi
    if ip link show "dfl$idx" >/dev/null 2>&1; then
        die "interface dfl$idx already exists: a stale target holds 10.77.$idx.0/24 (run: lab.sh leaks)"
    fi
    local used
    used=$(ip -o -4 addr show | awk -v p="10.77.$idx." 'index($4, p) == 1 {print $2}')
    [ -z "$used" ] || die "10.77.$idx.0/24 is already used by interface $used (run: lab.sh leaks)"
    used=$(ip -4 route show to match "10.77.$idx.2" | grep -v '^default' || true)
    [ -z "$used" ] || die "a route already covers 10.77.$idx.2: $used (run: lab.sh leaks)"
    [ ! -e "$RUN/targets/$name" ] || die "target '$name' is already registered in $RUN/targets (run: lab.sh leaks)"
}

# The launcher: one per target, in the target's own cgroups; restarts nspawn
# on reboot (exit code 133) and stops otherwise or when asked to.
# The target's console is read (into console.log, with this launcher's
# output): a console nobody reads (--console=passive) fills its pty's
# buffer, and the target's systemd then blocks for good on a write to it
# (it prints a few hundred bytes each time it re-executes itself: some 30
# re-executions after a boot froze it). A real host's console is drained.
cmd_launch() {
    local name=$1 tdir=$2
    echo $$ >"$CG_V1/$name/cgroup.procs"
    echo $$ >"$CG_V2/$name/cgroup.procs"
    # Replaced, not rewritten in place: wait_ready reads it meanwhile, and
    # an empty read would take the launcher for dead.
    echo $$ >"$tdir/launcher.pid.new" && mv -f "$tdir/launcher.pid.new" "$tdir/launcher.pid"
    local rc=0 boots=0
    while :; do
        boots=$((boots + 1))
        printf '=== boot %s at %s\n' "$boots" "$(date -Is)"
        SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 setsid systemd-nspawn --boot \
            --register=no --keep-unit --quiet --directory="$tdir/merged" \
            --machine="$name" --network-namespace-path="/run/netns/$name" \
            --capability=CAP_NET_ADMIN --console=read-only </dev/null &
        echo $! >"$tdir/nspawn.pid"
        rc=0
        wait $! || rc=$?
        printf '=== nspawn exited with %s at %s\n' "$rc" "$(date -Is)"
        if [ "$rc" != 133 ] || [ -e "$tdir/stopping" ]; then break; fi
        # A target told not to come back (a test of hosts lost in a
        # reboot) stays down: powered off, its address refusing ssh.
        if [ -e "$tdir/merged/etc/lab-no-return" ]; then
            printf '=== /etc/lab-no-return: staying down instead of rebooting\n'
            break
        fi
    done
    rm -f "$tdir/nspawn.pid"
    echo "$rc" >"$tdir/exit-code"
}

wait_ready() { # LABDIR ADDR TDIR DEADLINE: ssh answers, then system running
    local labdir=$1 addr=$2 tdir=$3 deadline=$4
    while ! lab_ssh "$labdir" "$addr" true 2>/dev/null; do
        # (the launcher's comm is briefly "setsid" while it starts: check
        # that it lives, not what it runs)
        if ! kill -0 "$(cat "$tdir/launcher.pid" 2>/dev/null || echo none)" 2>/dev/null; then
            tail -n 20 "$tdir/console.log" >&2 || true
            die "$addr: the target's nspawn exited before ssh answered (log: $tdir/console.log)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$tdir/console.log" >&2 || true
            die "$addr: no ssh within ${BOOT_TIMEOUT}s (log: $tdir/console.log)"
        fi
        sleep 0.1
    done
    # A loaded machine can let one login time out in its banner exchange
    # (ssh exits 255) although sshd answered a moment ago: ask again until
    # the deadline; only systemd's own answer ends the wait.
    local left state rc
    while :; do
        left=$((deadline - SECONDS))
        ((left > 1)) || left=2
        rc=0
        state=$(lab_ssh "$labdir" "$addr" timeout "$left" systemctl is-system-running --wait 2>&1) || rc=$?
        if [ "$rc" != 255 ] || ((SECONDS >= deadline)); then break; fi
        printf 'lab.sh: %s: login failed while waiting for boot (%s), again\n' "$addr" "$state" >&2
        sleep 0.5
    done
    if [ "$state" != running ]; then
        # shellcheck disable=SC2016 # expanded on the target
        lab_ssh "$labdir" "$addr" 'systemctl --failed --no-legend --plain; for u in $(systemctl --failed --no-legend --plain | cut -d" " -f1); do journalctl -b -u "$u" --no-pager -n 15; done' >&2 || true
        die "$addr: system is '$state', not 'running'"
    fi
}

# Every target's systemd takes inotify instances and watches from the
# host's one pool: the kernel's defaults (128 instances) run out at a few
# dozen targets. Raised, never lowered.
raise_inotify_limits() {
    local key want have
    for key in max_user_instances:8192 max_user_watches:1048576; do
        want=${key#*:} key=${key%%:*}
        have=$(cat "/proc/sys/fs/inotify/$key")
        if [ "$have" -lt "$want" ]; then
            echo "$want" >"/proc/sys/fs/inotify/$key"
        fi
    done
}

cmd_boot() {
    local name=$1 idx=$2 suite=$3 labdir=$4
    check_name "$name"
    check_idx "$idx"
    need_root
    raise_inotify_limits
    local t0
    t0=$(now)
    local rootfs
    rootfs=$("$here/rootfs.sh" "$suite")
    mkdir -p "$labdir" "$RUN/targets"
    labdir=$(readlink -f "$labdir")
    cmd_keygen "$labdir" >/dev/null
    local tdir="$labdir/targets/$name" addr="10.77.$idx.2"
    local t1
    t1=$(now)

    # Host-wide steps run one at a time: the stale checks, the shared tmpfs.
    exec 8>"$RUN/.host.lock"
    flock 8
    refuse_stale "$name" "$idx"
    [ ! -e "$tdir" ] || die "$tdir exists: stop the old target first (lab.sh stop $name $labdir)"
    mkdir -p "$tdir/upper" "$tdir/work" "$tdir/merged"
    printf 'name=%s\nidx=%s\nsuite=%s\nlabdir=%s\nrootfs=%s\n' \
        "$name" "$idx" "$suite" "$labdir" "$rootfs" >"$tdir/target.env"
    cp "$tdir/target.env" "$RUN/targets/$name"
    if ! mountpoint -q /run/systemd/nspawn; then
        mkdir -p /run/systemd/nspawn
        mount -t tmpfs tmpfs /run/systemd/nspawn
    fi
    mount -t overlay overlay \
        -o "lowerdir=$rootfs,upperdir=$tdir/upper,workdir=$tdir/work" "$tdir/merged"
    ip netns add "$name"
    ip link add "dfl$idx" type veth peer name host0 netns "$name"
    flock -u 8

    ip addr add "10.77.$idx.1/24" dev "dfl$idx"
    ip link set "dfl$idx" up
    ip -n "$name" link set lo up
    ip -n "$name" addr add "$addr/24" dev host0
    ip -n "$name" link set host0 up
    ip -n "$name" route add default via "10.77.$idx.1"
    # IPv6 too (no duplicate address detection: usable at once).
    ip addr add "fd77:0:0:$idx::1/64" dev "dfl$idx" nodad
    ip -n "$name" addr add "fd77:0:0:$idx::2/64" dev host0 nodad

    # Identity: machine-id, hostname, ssh host key, authorized keys.
    local m="$tdir/merged"
    printf '%s\n' "$(tr -d '-' </proc/sys/kernel/random/uuid)" >"$m/etc/machine-id"
    printf '%s\n' "$name" >"$m/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' \
        "$name" >"$m/etc/hosts"
    ssh-keygen -q -t ed25519 -N '' -C "root@$name" -f "$m/etc/ssh/ssh_host_ed25519_key"
    local user home uid gid
    for user in root deploy pwuser; do
        IFS=: read -r _ _ uid gid _ home _ < <(grep "^$user:" "$m/etc/passwd")
        mkdir -p "$m$home/.ssh"
        cp "$labdir/id_ed25519.pub" "$m$home/.ssh/authorized_keys"
        chmod 0700 "$m$home/.ssh"
        chmod 0600 "$m$home/.ssh/authorized_keys"
        chown -R "$uid:$gid" "$m$home/.ssh"
    done
    (
        flock 7
        grep -v "^${addr}[ ,]" "$labdir/known_hosts" >"$labdir/known_hosts.new" || true
        printf '%s,%s %s\n' "$addr" "fd77:0:0:$idx::2" "$(cut -d' ' -f1,2 "$m/etc/ssh/ssh_host_ed25519_key.pub")" \
            >>"$labdir/known_hosts.new"
        mv "$labdir/known_hosts.new" "$labdir/known_hosts"
    ) 7>"$labdir/.known_hosts.lock"

    mkdir -p "$CG_V1/$name" "$CG_V2/$name"
    setsid bash "$self" _launch "$name" "$tdir" </dev/null >>"$tdir/console.log" 2>&1 8>&- &
    echo $! >"$tdir/launcher.pid"

    local deadline=$((SECONDS + BOOT_TIMEOUT))
    wait_ready "$labdir" "$addr" "$tdir" "$deadline"
    log "$name ($suite) at $addr running: boot $(since "$t1")s (rootfs lookup $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')s)"
}

cmd_stop() {
    local name=$1 labdir=$2
    check_name "$name"
    [ "$(id -u)" = 0 ] || die "stop needs root"
    labdir=$(readlink -f "$labdir" 2>/dev/null || echo "$labdir")
    local tdir="$labdir/targets/$name" idx=""
    if [ -r "$tdir/target.env" ]; then
        idx=$(sed -n 's/^idx=//p' "$tdir/target.env")
    elif [ -r "$RUN/targets/$name" ]; then
        idx=$(sed -n 's/^idx=//p' "$RUN/targets/$name")
    fi
    if [ -d "$tdir" ]; then touch "$tdir/stopping"; fi

    # Clean poweroff first: SIGTERM to nspawn makes the container shut down.
    local npid lpid
    npid=$(cat "$tdir/nspawn.pid" 2>/dev/null || true)
    lpid=$(cat "$tdir/launcher.pid" 2>/dev/null || true)
    if pid_is "$npid" systemd-nspawn; then
        kill -TERM "$npid" 2>/dev/null || true
        local deadline=$((SECONDS + STOP_TIMEOUT))
        while pid_is "$npid" systemd-nspawn && ((SECONDS < deadline)); do sleep 0.1; done
        if pid_is "$npid" systemd-nspawn; then
            log "$name: nspawn did not stop within ${STOP_TIMEOUT}s, killing it"
            kill -KILL "$npid" 2>/dev/null || true
        fi
    fi
    for _ in $(seq 50); do pid_is "$lpid" bash || break; sleep 0.1; done
    if pid_is "$lpid" bash; then kill -KILL "$lpid" 2>/dev/null || true; fi

    # Whatever still runs in the target's cgroups (after a SIGKILL of nspawn
    # the container's processes would otherwise live on) is killed by cgroup,
    # never by name.
    local cg
    for cg in "$CG_V2/$name" "$CG_V1/$name"; do
        [ -d "$cg" ] || continue
        for _ in $(seq 50); do
            local procs
            procs=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
            [ -n "$procs" ] || break
            # shellcheck disable=SC2086
            kill -KILL $procs 2>/dev/null || true
            sleep 0.1
        done
    done

    if mountpoint -q "$tdir/merged" 2>/dev/null; then
        umount "$tdir/merged" 2>/dev/null || { sleep 0.5; umount "$tdir/merged" || umount -l "$tdir/merged"; }
    fi
    ip netns del "$name" 2>/dev/null || true
    if [ -n "$idx" ]; then ip link del "dfl$idx" 2>/dev/null || true; fi
    for cg in "$CG_V2/$name" "$CG_V1/$name"; do
        [ -d "$cg" ] || continue
        find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
        [ ! -d "$cg" ] || log "$name: could not remove cgroup $cg"
    done
    rm -rf "$tdir/work" "$tdir/merged"
    rm -f "$RUN/targets/$name"
}

# The deploying machine of another suite: CMD runs in a container of SUITE's
# root file system (its Nix, its OpenSSH) that shares this machine's network
# (the targets' addresses), with LABDIR bound in at its own path. Not booted:
# CMD runs as root under nspawn's stub init (--as-pid2), and root's Nix uses
# the container's own store directly, no daemon. Options:
#   -b PATH          bind PATH read-only at its own path (the tool's binary)
#   -e NAME=VALUE    set an environment variable for CMD
#   -l DIR           keep the container's changes (its store) in DIR across
#                    runs (one run at a time); without it every run starts
#                    from the pristine root file system
# The root file system is the read-only lower layer of an overlay, as for
# targets: nspawn's --ephemeral would copy the whole tree on every run here
# (about 7 s on ext4). stdin, stdout and stderr are CMD's own; the exit code
# is CMD's. The run's layers live in $RUN/deployers/dfd-<pid> and its cgroups
# (dfd-<pid>) below the caller's own, so that whoever accounts the caller's
# cgroup (bench/measure.py) counts the container's processes too.
cmd_deployer() {
    local suite=$1 labdir=$2
    shift 2
    local binds=() envs=() layer=""
    while (($#)); do
        case $1 in
            -b) [ -e "$2" ] || die "deployer: no such path '$2'"
                binds+=("--bind-ro=$(readlink -f "$2")"); shift 2 ;;
            -e) [[ $2 == [A-Za-z_]*=* ]] || die "deployer: -e wants NAME=VALUE, got '$2'"
                envs+=("--setenv=$2"); shift 2 ;;
            -l) layer=$2; shift 2 ;;
            --) shift; break ;;
            *) die "deployer: unknown option '$1' (want -b PATH, -e NAME=VALUE, -l DIR, then -- CMD...)" ;;
        esac
    done
    (($#)) || die "deployer: no command after --"
    need_root
    local rootfs
    rootfs=$("$here/rootfs.sh" "$suite")
    [ -d "$labdir" ] || die "deployer: no lab directory '$labdir'"
    labdir=$(readlink -f "$labdir")

    local name="dfd-$$" dir="$RUN/deployers/dfd-$$"
    mkdir -p "$dir/merged"
    if [ -n "$layer" ]; then
        mkdir -p "$layer/upper" "$layer/work"
        exec 6>"$layer/.lock"
        flock 6
    else
        layer=$dir
        mkdir -p "$layer/upper" "$layer/work"
    fi
    local v2 v1
    v2="/sys/fs/cgroup/unified$(sed -n 's/^0:://p' /proc/self/cgroup)"
    v1="/sys/fs/cgroup/systemd$(sed -n 's/^[0-9]*:name=systemd://p' /proc/self/cgroup)"
    v2=${v2%/} v1=${v1%/}
    printf 'layer=%s\ncg_v2=%s\ncg_v1=%s\n' "$layer" "$v2/$name" "$v1/$name" >"$dir/deployer.env"
    DEPLOYER=("$dir" "$v2/$name" "$v1/$name")
    # Back to the caller's cgroups first: ours are removed.
    trap 'echo $$ >"'"$v2"'/cgroup.procs"; echo $$ >"'"$v1"'/cgroup.procs"; deployer_cleanup "${DEPLOYER[@]}"' EXIT
    (
        flock 8
        if ! mountpoint -q /run/systemd/nspawn; then
            mkdir -p /run/systemd/nspawn
            mount -t tmpfs tmpfs /run/systemd/nspawn
        fi
    ) 8>"$RUN/.host.lock"
    mount -t overlay overlay \
        -o "lowerdir=$rootfs,upperdir=$layer/upper,workdir=$layer/work" "$dir/merged"
    mkdir -p "$v2/$name" "$v1/$name"
    echo $$ >"$v2/$name/cgroup.procs"
    echo $$ >"$v1/$name/cgroup.procs"
    local rc=0
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --register=no --keep-unit --quiet \
        --console=pipe --as-pid2 --directory="$dir/merged" --machine="$name" \
        --bind="$labdir" "${binds[@]}" "${envs[@]}" --chdir="$labdir" -- "$@" || rc=$?
    return "$rc"
}

deployer_cleanup() { # DIR CGROUP_V2 CGROUP_V1
    local dir=$1 cg procs
    for cg in "$2" "$3"; do
        [ -n "$cg" ] && [ -d "$cg" ] || continue
        # What still runs there (a reaped run's container) is killed by
        # cgroup, never by name.
        for _ in $(seq 50); do
            procs=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
            [ -n "$procs" ] || break
            # shellcheck disable=SC2086
            kill -KILL $procs 2>/dev/null || true
            sleep 0.1
        done
        find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || log "deployer: could not remove cgroup $cg"
    done
    if mountpoint -q "$dir/merged"; then
        umount "$dir/merged" 2>/dev/null || { sleep 0.5; umount "$dir/merged" || umount -l "$dir/merged"; }
    fi
    rm -rf "$dir"
}

target_addr() {
    local tdir=$1
    [ -r "$tdir/target.env" ] || die "no target at $tdir"
    printf '10.77.%s.2\n' "$(sed -n 's/^idx=//p' "$tdir/target.env")"
}

cmd_reboot() {
    local name=$1 labdir=$2
    labdir=$(readlink -f "$labdir")
    local tdir="$labdir/targets/$name" addr old new t0
    addr=$(target_addr "$tdir")
    old=$(lab_ssh "$labdir" "$addr" cat /proc/sys/kernel/random/boot_id)
    t0=$(now)
    lab_ssh "$labdir" "$addr" systemctl reboot 2>/dev/null || true
    local deadline=$((SECONDS + BOOT_TIMEOUT))
    while :; do
        new=$(lab_ssh "$labdir" "$addr" cat /proc/sys/kernel/random/boot_id 2>/dev/null || true)
        [ -z "$new" ] || [ "$new" = "$old" ] || break
        ((SECONDS < deadline)) || die "$name: no new boot within ${BOOT_TIMEOUT}s (log: $tdir/console.log)"
        sleep 0.1
    done
    wait_ready "$labdir" "$addr" "$tdir" "$deadline"
    log "$name rebooted: running again after $(since "$t0")s"
}

cmd_ssh() {
    local name=$1 labdir=$2
    shift 2
    labdir=$(readlink -f "$labdir")
    lab_ssh "$labdir" "$(target_addr "$labdir/targets/$name")" "$@"
}

# A veth pair straight between two targets' network namespaces, with a
# route to each other's address over it: a build host or a cache reaches
# the targets without the host routing between lab links (it does not
# forward). Deleted with either namespace (`stop`).
cmd_link() {
    local a=$1 b=$2 labdir=$3 ia ib
    [ "$(id -u)" = 0 ] || die "link needs root"
    labdir=$(readlink -f "$labdir")
    ia=$(sed -n 's/^idx=//p' "$labdir/targets/$a/target.env" 2>/dev/null) || true
    ib=$(sed -n 's/^idx=//p' "$labdir/targets/$b/target.env" 2>/dev/null) || true
    [ -n "$ia" ] && [ -n "$ib" ] || die "link: no targets $a and $b in $labdir"
    [ "$ia" != "$ib" ] || die "link: a target cannot be linked to itself"
    ip -n "$a" link add "lk$ib" type veth peer name "lk$ia" netns "$b"
    ip -n "$a" link set "lk$ib" up
    ip -n "$b" link set "lk$ia" up
    ip -n "$a" route add "10.77.$ib.2/32" dev "lk$ib" src "10.77.$ia.2"
    ip -n "$b" route add "10.77.$ia.2/32" dev "lk$ia" src "10.77.$ib.2"
}

cmd_leaks() {
    local filter=${1:-} found=0 line
    # With FILTER, only leftovers whose description contains it count.
    report() {
        [ -z "$filter" ] || [[ "$*" == *"$filter"* ]] || return 0
        printf '%s\n' "$*"
        found=1
    }
    for line in "$RUN"/targets/*; do
        if [ -e "$line" ]; then report "registered target: ${line##*/} ($(tr '\n' ' ' <"$line"))"; fi
    done
    for line in "$RUN"/claims/*; do
        if [ -e "$line" ]; then
            local owner
            owner=$(cat "$line/owner" 2>/dev/null || true)
            report "claimed index: ${line##*/} (owner pid ${owner:-?}, target dft-${owner:-?}-${line##*/})"
        fi
    done
    while read -r line; do
        [ -n "$line" ] || continue
        if ip -n "$line" link show host0 >/dev/null 2>&1; then
            report "netns: $line"
        fi
    done < <(ip netns list 2>/dev/null | awk '{print $1}')
    while read -r line; do
        if [ -n "$line" ]; then
            local owner
            owner=$(grep -l "^idx=${line#dfl}\$" "$RUN"/targets/* 2>/dev/null | head -n 1 || true)
            report "veth: $line${owner:+ (target ${owner##*/})}"
        fi
    done < <(ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^dfl[0-9]+(@|$)/ {sub(/@.*/, "", $2); print $2}')
    local cache=${DEPLOY_FLAKE_LAB_CACHE:-/var/cache/deploy-flake-lab}
    while read -r line; do
        if [ -n "$line" ]; then report "mount: $line"; fi
    done < <(awk -v c="lowerdir=$cache/" '$3 == "overlay" && index($4, c) {print $2}' /proc/self/mounts)
    local cg
    for cg in "$CG_V1" "$CG_V2"; do
        [ -d "$cg" ] || continue
        while read -r line; do
            if [ -n "$line" ]; then report "cgroup: $line"; fi
        done < <(find "$cg" -mindepth 1 -maxdepth 1 -type d)
    done
    for line in "$RUN"/deployers/*; do
        if [ -e "$line" ]; then report "deployer: ${line##*/} ($(tr '\n' ' ' <"$line/deployer.env" 2>/dev/null))"; fi
    done
    local p
    for p in /proc/[0-9]*; do
        if [ "$(cat "$p/comm" 2>/dev/null || true)" = systemd-nspawn ]; then
            report "nspawn process: ${p#/proc/} $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null || true)"
        fi
    done
    if [ "$found" = 0 ]; then
        echo "no lab leftovers"
        return 0
    fi
    return 1
}

# Stops the targets of test runs and demos that died without stopping them:
# names dft-<pid>-<idx> (tests/common) and demo-<pid>-<idx> (demo.sh) whose
# <pid> is gone. Targets booted by hand under other names are left alone.
cmd_reap() {
    [ "$(id -u)" = 0 ] || die "reap needs root"
    local entry name pid labdir idx reaped=0
    for entry in "$RUN"/targets/*; do
        [ -e "$entry" ] || continue
        name=${entry##*/}
        [[ $name =~ ^(dft|demo)-([0-9]+)-[0-9]+$ ]] || continue
        pid=${BASH_REMATCH[2]}
        [ ! -d "/proc/$pid" ] || continue
        labdir=$(sed -n 's/^labdir=//p' "$entry")
        log "reaping $name (process $pid is gone)"
        cmd_stop "$name" "$labdir"
        reaped=$((reaped + 1))
        if ! grep -qs "^labdir=$labdir\$" "$RUN"/targets/* &&
            ! grep -qs " $labdir/" /proc/self/mounts; then
            rm -rf "$labdir"
        fi
    done
    # Deploying machines (cmd_deployer) whose lab.sh died without cleaning up.
    for entry in "$RUN"/deployers/dfd-*; do
        [ -d "$entry" ] || continue
        pid=${entry##*/dfd-}
        [ ! -d "/proc/$pid" ] || continue
        log "reaping deployer ${entry##*/} (process $pid is gone)"
        deployer_cleanup "$entry" "$(sed -n 's/^cg_v2=//p' "$entry/deployer.env")" \
            "$(sed -n 's/^cg_v1=//p' "$entry/deployer.env")"
    done
    for entry in "$RUN"/claims/*; do
        [ -d "$entry" ] || continue
        pid=$(cat "$entry/owner" 2>/dev/null || true)
        idx=${entry##*/}
        if [ -n "$pid" ] && [ ! -d "/proc/$pid" ] && ! ip link show "dfl$idx" >/dev/null 2>&1; then
            rm -rf "$entry"
            log "released index $idx (process $pid is gone)"
        fi
    done
    log "reaped $reaped target(s)"
}

usage() { sed -n '2,16p' "$self" | sed 's/^# \{0,1\}//' >&2; exit 2; }

cmd=${1:-}
shift || true
case "$cmd" in
    keygen) [ $# = 1 ] || usage; cmd_keygen "$1" ;;
    boot) [ $# = 4 ] || usage; cmd_boot "$@" ;;
    stop) [ $# = 2 ] || usage; cmd_stop "$@" ;;
    reboot) [ $# = 2 ] || usage; cmd_reboot "$@" ;;
    ssh) [ $# -ge 2 ] || usage; cmd_ssh "$@" ;;
    link) [ $# = 3 ] || usage; cmd_link "$@" ;;
    leaks) [ $# -le 1 ] || usage; cmd_leaks "$@" ;;
    reap) [ $# = 0 ] || usage; cmd_reap ;;
    deployer) [ $# -ge 4 ] || usage; cmd_deployer "$@" ;;
    _launch) cmd_launch "$@" ;;
    *) usage ;;
esac
