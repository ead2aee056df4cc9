# shellcheck shell=sh
# The host lock: its holder, its heartbeat and watchdog, the runs it
# prunes, and the switches it must not disturb.
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

# holder_alive PID RUNID: is PID the lock holder of run RUNID?
holder_alive() {
    [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' < "/proc/$1/cmdline" 2> /dev/null |
        grep -qF " hold " && tr '\0' ' ' < "/proc/$1/cmdline" 2> /dev/null | grep -qF "/runs/$2 "
}

# prune_runs OWN: of the runs that are over, those beyond the newest
# RUNS_KEPT (OWN counted) lose their directory, and the others their log
# when they succeeded. Never OWN, a run whose agent is at work, or the run
# that holds the host lock. (Run ids begin with the time: newest first is
# the reverse order of their names.)
prune_runs() {
    own=$1 kept=1
    holder=$(sed -n 's/^run \([^ ]*\) .*/\1/p' "$STATE/lock.info" 2> /dev/null)
    set --
    for dir in "$STATE"/runs/*; do
        if [ -d "$dir" ]; then set -- "${dir##*/}" "$@"; fi
    done
    for id in "$@"; do
        dir=$STATE/runs/$id
        if [ "$dir" = "$own" ] || [ "$id" = "$holder" ] || run_at_work "$id"; then continue; fi
        if [ "$kept" -ge "$RUNS_KEPT" ]; then
            rm -rf "$dir"
            continue
        fi
        kept=$((kept + 1))
        read -r state _ < "$dir/status" 2> /dev/null
        case "${state:-}" in booted | confirmed) rm -f "$dir/log" ;; esac
        state=''
    done
}

# Is an action (activate, boot) of the run RUNID at work?
run_at_work() {
    slice=$SLICE
    if [ -d "$slice" ]; then
        [ -d "$slice/deploy-flake-$1-activate.service" ] || [ -d "$slice/deploy-flake-$1-boot.service" ]
    else
        systemctl is-active --quiet "deploy-flake-$1-activate.service" "deploy-flake-$1-boot.service" 2> /dev/null
    fi
}

# Switches that must not be disturbed: other runs' activations, and
# nixos-rebuild or an automatic upgrade switching this host. With cgroup v2,
# a service has a cgroup of its own exactly while it has processes: seen
# without asking systemd.
switches_in_progress() {
    slice=$SLICE
    if [ -d "$slice" ]; then
        for unit in "$slice"/deploy-flake-*.service "$slice"/nixos-rebuild-switch-to-configuration.service \
            "$slice"/nixos-upgrade.service; do
            if [ -d "$unit" ]; then echo "deploy-flake-busy ${unit##*/}"; fi
        done
        return 0
    fi
    systemctl list-units --plain --no-legend --no-pager --state=active,activating,deactivating \
        'deploy-flake-*' nixos-rebuild-switch-to-configuration.service nixos-upgrade.service 2> /dev/null |
        awk '{print "deploy-flake-busy " $1}'
}

# The files of the host lock, and who holds it: "<pid> <run id>" of the
# holder (flock holds the lock while the holder's shell lives).
release_lock() {
    held=''
    if [ -s "$STATE/lock.pid" ]; then read -r held _ < "$STATE/lock.pid"; fi
    if [ "$held" = "$1" ]; then rm -f "$STATE/lock.info" "$STATE/lock.pid"; fi
}

# heartbeat: the deployer said it is alive: the time, for the watchdog and
# for the run's agent waiting for the confirmation.
heartbeat() {
    uptime_now
    printf '%s\n' "$now" > "$STATE/lock.beat"
    if [ -d "$rundir" ]; then printf '%s\n' "$now" > "$rundir/alive"; fi
}

# The Nix that commands run here ("deploy-flake-nix <nix --version>"), for
# the flags the deployer gives them. Asked again only when the binary is
# another (device, inode, time, size): a lock costs one stat, not a Nix.
nix_version() {
    bin=$(command -v nix) || return 0
    key=$(stat -L -c '%d:%i:%Y:%s' "$bin" 2> /dev/null) || return 0
    seen='' said=''
    if [ -r "$STATE/nix-version" ]; then { read -r seen && read -r said; } < "$STATE/nix-version"; fi
    if [ "$seen" != "$key" ]; then
        said=$(nix --version 2> /dev/null | head -n 1)
        printf '%s\n%s\n' "$key" "$said" > "$STATE/nix-version.tmp" &&
            mv -f "$STATE/nix-version.tmp" "$STATE/nix-version"
    fi
    echo "deploy-flake-nix $said"
}

hold() {
    info=$1 patience=$2 rundir=$3 preflight=${4:-}
    main=$$
    printf '%s\n' "$info" > "$STATE/lock.info"
    printf '%s %s\n' "$main" "${rundir##*/}" > "$STATE/lock.pid"
    # Ended by a signal it can catch, it leaves no lock behind that nobody
    # holds (`status` also checks that the holder is alive).
    trap 'release_lock "$main"; exit 0' HUP INT TERM
    # Holders are counted: a run that takes its lock back learns whether
    # another run held it in between.
    serial=''
    if [ -s "$STATE/lock.serial" ]; then read -r serial < "$STATE/lock.serial"; fi
    case "$serial" in '' | *[!0-9]*) serial=0 ;; esac
    serial=$((serial + 1))
    printf '%s\n' "$serial" > "$STATE/lock.serial"
    echo "deploy-flake-serial $serial"
    switches_in_progress
    nix_version
    # The deployer's preflight, answered with the lock.
    if [ -n "$preflight" ]; then health "$preflight" "$rundir"; fi
    # Taking the lock (again, after a reconnect) is a sign of life.
    heartbeat
    echo "deploy-flake-locked"
    prune_runs "$rundir"
    # Each line on stdin is a heartbeat. Without one for PATIENCE seconds
    # the deployer is taken for lost (a network partition leaves no EOF)
    # and the lock is released: flock -o holds it only while this shell
    # lives. The deployer hears why, should it still be listening.
    (
        while sleep 2; do
            kill -0 "$main" 2> /dev/null || exit 0
            last=''
            read -r last < "$STATE/lock.beat" 2> /dev/null
            uptime_now
            case "$last" in '' | *[!0-9]*) continue ;; esac
            if [ $((now - last)) -gt "$patience" ]; then
                echo "deploy-flake-lost no heartbeat reached the host for ${patience} s"
                release_lock "$main"
                kill -KILL "$main"
                exit 0
            fi
        done
    ) < /dev/null 2> /dev/null &
    watchdog=$!
    while IFS= read -r _; do
        heartbeat
    done
    kill "$watchdog" 2> /dev/null
    release_lock "$main"
}

# displace RUNID CMD...: a holder of the host lock of run RUNID (one whose
# deployer lost its connection to it) is ended, and the lock free, before
# CMD runs (`exec`): a run takes its own lock back at once, and never
# waits for its stale holder. Another run's holder is left alone.
displace() {
    runid=$1
    shift
    pid='' holder=''
    if [ -s "$STATE/lock.pid" ]; then read -r pid holder < "$STATE/lock.pid"; fi
    if [ "$holder" = "$runid" ] && holder_alive "$pid" "$runid"; then
        # flock (its parent) frees the lock as the holder ends.
        parent=''
        while read -r key value; do
            if [ "$key" = PPid: ]; then parent=$value; fi
        done < "/proc/$pid/status"
        kill -KILL "$pid" 2> /dev/null
        n=0
        while [ "$n" -lt 50 ] && { kill -0 "$pid" || kill -0 "${parent:-$pid}"; } 2> /dev/null; do
            sleep 0.1
            n=$((n + 1))
        done
    fi
    exec "$@"
}
