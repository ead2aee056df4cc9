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
# that holds the host lock (its id as `hold` wrote it in lock.pid; the
# owner's words in lock.info are only shown). (Run ids begin with the
# time: newest first is the reverse order of their names.)
prune_runs() {
    prune_own=$1 prune_kept=1 prune_holder=''
    if [ -s "$STATE/lock.pid" ]; then read -r _ prune_holder < "$STATE/lock.pid"; fi
    set --
    for prune_dir in "$STATE"/runs/*; do
        if [ -d "$prune_dir" ]; then set -- "${prune_dir##*/}" "$@"; fi
    done
    for prune_id in "$@"; do
        prune_dir=$STATE/runs/$prune_id
        if [ "$prune_dir" = "$prune_own" ] || [ "$prune_id" = "$prune_holder" ] || run_at_work "$prune_id"; then continue; fi
        if [ "$prune_kept" -ge "$RUNS_KEPT" ]; then
            rm -rf "$prune_dir"
            continue
        fi
        prune_kept=$((prune_kept + 1))
        read -r prune_state _ < "$prune_dir/status" 2> /dev/null
        case "${prune_state:-}" in booted | confirmed) rm -f "$prune_dir/log" ;; esac
        prune_state=''
    done
}

# Is an action (activate, boot) of the run RUNID at work?
run_at_work() {
    work_slice=$SLICE
    if [ -d "$work_slice" ]; then
        [ -d "$work_slice/deploy-flake-$1-activate.service" ] || [ -d "$work_slice/deploy-flake-$1-boot.service" ]
    else
        systemctl is-active --quiet "deploy-flake-$1-activate.service" "deploy-flake-$1-boot.service" 2> /dev/null
    fi
}

# Switches that must not be disturbed: other runs' activations, and
# nixos-rebuild or an automatic upgrade switching this host. With cgroup v2,
# a service has a cgroup of its own exactly while it has processes: seen
# without asking systemd.
switches_in_progress() {
    switches_slice=$SLICE
    if [ -d "$switches_slice" ]; then
        for switches_unit in "$switches_slice"/deploy-flake-*.service "$switches_slice"/nixos-rebuild-switch-to-configuration.service \
            "$switches_slice"/nixos-upgrade.service; do
            if [ -d "$switches_unit" ]; then echo "deploy-flake-busy ${switches_unit##*/}"; fi
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
    release_held=''
    if [ -s "$STATE/lock.pid" ]; then read -r release_held _ < "$STATE/lock.pid"; fi
    if [ "$release_held" = "$1" ]; then rm -f "$STATE/lock.info" "$STATE/lock.pid"; fi
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
    nv_bin=$(command -v nix) || return 0
    nv_key=$(stat -L -c '%d:%i:%Y:%s' "$nv_bin" 2> /dev/null) || return 0
    nv_seen='' nv_said=''
    if [ -r "$STATE/nix-version" ]; then { read -r nv_seen && read -r nv_said; } < "$STATE/nix-version"; fi
    if [ "$nv_seen" != "$nv_key" ]; then
        nv_said=$(nix --version 2> /dev/null | head -n 1)
        printf '%s\n%s\n' "$nv_key" "$nv_said" > "$STATE/nix-version.tmp" &&
            mv -f "$STATE/nix-version.tmp" "$STATE/nix-version"
    fi
    echo "deploy-flake-nix $nv_said"
}

hold() {
    hold_info=$1 hold_patience=$2 hold_preflight=${3:-}
    hold_main=$$
    printf '%s\n' "$hold_info" > "$STATE/lock.info"
    printf '%s %s\n' "$hold_main" "$runid" > "$STATE/lock.pid"
    # Ended by a signal it can catch, it leaves no lock behind that nobody
    # holds (`status` also checks that the holder is alive).
    trap 'release_lock "$hold_main"; exit 0' HUP INT TERM
    hold_serial
    switches_in_progress
    nix_version
    # The deployer's preflight, answered with the lock.
    if [ -n "$hold_preflight" ]; then health "$hold_preflight"; fi
    # Taking the lock (again, after a reconnect) is a sign of life.
    heartbeat
    echo "deploy-flake-locked"
    prune_runs "$rundir"
    # Each line on stdin is a heartbeat. Without one for PATIENCE seconds
    # the deployer is taken for lost (a network partition leaves no EOF)
    # and the lock is released: flock -o holds it only while this shell
    # lives. The deployer hears why, should it still be listening.
    hold_watchdog "$hold_main" "$hold_patience" < /dev/null 2> /dev/null &
    hold_dog=$!
    while IFS= read -r _; do
        heartbeat
    done
    kill "$hold_dog" 2> /dev/null
    release_lock "$hold_main"
}

# hold_serial: holders are counted: a run that takes its lock back learns
# whether another run held it in between.
hold_serial() {
    serial_count=''
    if [ -s "$STATE/lock.serial" ]; then read -r serial_count < "$STATE/lock.serial"; fi
    case "$serial_count" in '' | *[!0-9]*) serial_count=0 ;; esac
    serial_count=$((serial_count + 1))
    printf '%s\n' "$serial_count" > "$STATE/lock.serial"
    echo "deploy-flake-serial $serial_count"
}

# hold_watchdog MAIN PATIENCE (in the background): ends the holder MAIN
# and frees the lock once no heartbeat came for PATIENCE seconds.
hold_watchdog() {
    while sleep 2; do
        kill -0 "$1" 2> /dev/null || exit 0
        watchdog_last=''
        read -r watchdog_last < "$STATE/lock.beat" 2> /dev/null
        uptime_now
        case "$watchdog_last" in '' | *[!0-9]*) continue ;; esac
        if [ $((now - watchdog_last)) -gt "$2" ]; then
            echo "deploy-flake-lost no heartbeat reached the host for ${2} s"
            release_lock "$1"
            kill -KILL "$1"
            exit 0
        fi
    done
}

# displace CMD...: a holder of the host lock of run RUNID (one whose
# deployer lost its connection to it) is ended, and the lock free, before
# CMD runs (`exec`): a run takes its own lock back at once, and never
# waits for its stale holder. Another run's holder is left alone.
displace() {
    displace_pid='' displace_holder=''
    if [ -s "$STATE/lock.pid" ]; then read -r displace_pid displace_holder < "$STATE/lock.pid"; fi
    if [ "$displace_holder" = "$runid" ] && holder_alive "$displace_pid" "$runid"; then
        # flock (its parent) frees the lock as the holder ends.
        displace_parent=''
        while read -r displace_key displace_value; do
            if [ "$displace_key" = PPid: ]; then displace_parent=$displace_value; fi
        done < "/proc/$displace_pid/status"
        kill -KILL "$displace_pid" 2> /dev/null
        displace_n=0
        while [ "$displace_n" -lt 50 ] && { kill -0 "$displace_pid" || kill -0 "${displace_parent:-$displace_pid}"; } 2> /dev/null; do
            sleep 0.1
            displace_n=$((displace_n + 1))
        done
    fi
    exec "$@"
}
