# shellcheck shell=sh
# Read-only answers: the pre-switch check, the health, what the host
# runs and boots, and what a new system would change.
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

# Runs `switch-to-configuration check`: the pre-switch checks and the
# switch inhibitors, before anything changes; after SELFCHECK, when given
# (a failing one ends it, its exit status said).
check() {
    toplevel=$1 secs=$2 selfcheck=$3
    shift 3
    stc_env "$@"
    sysrc="$STATE/.exit-status.$$"
    if [ -n "$selfcheck" ]; then
        out=$(system timeout "$secs" "$selfcheck" | cap_lines)
        read -r rc < "$sysrc" || rc=1
        if [ -n "$out" ]; then printf '%s\n' "$out"; fi
        echo "deploy-flake-self-check-exit $rc"
        [ "$rc" = 0 ] || { rm -f "$sysrc"; return 0; }
    fi
    # shellcheck disable=SC2086 # allow-listed words
    out=$(system timeout "$secs" env $stc_env "$toplevel/bin/switch-to-configuration" check | cap_lines)
    read -r rc < "$sysrc" || rc=1
    rm -f "$sysrc"
    printf '%s\n' "$out"
    case "$rc" in
        0) verdict=ok ;;
        11) verdict=busy ;;
        124) verdict=timeout ;;
        *)
            case "$out" in
                *"Pre-switch checks failed"* | *"critical components"*) verdict=refused ;;
                *[Uu]sage:* | *"invalid action"*) verdict=unsupported ;;
                *) verdict=refused ;;
            esac
            ;;
    esac
    echo "deploy-flake-check $verdict"
}

health() {
    secs=$1 rundir=${2:-}
    # One question to systemd when the system is up: its state and how
    # many units failed; their names only when some did. A systemd that
    # does not answer for a moment (busy, or re-executing itself) is asked
    # again, within SECS (only where systemd runs the host).
    uptime_now
    until=$((now + secs))
    while :; do
        state='' nfailed=''
        for prop in $(systemctl show --property=SystemState --property=NFailedUnits 2> /dev/null); do
            case "$prop" in
                SystemState=*) state=${prop#*=} ;;
                NFailedUnits=*) nfailed=${prop#*=} ;;
            esac
        done
        uptime_now
        if [ -n "$state" ] || [ "$now" -ge "$until" ] || [ ! -d /run/systemd/system ]; then break; fi
        sleep 0.5
    done
    case "$state" in
        initializing | starting | '')
            left=$((until > now ? until - now : 1))
            state=$(timeout "$left" systemctl is-system-running --wait 2> /dev/null)
            if [ "$?" = 124 ]; then state="still-starting-after-${secs}s"; fi
            nfailed=''
            ;;
    esac
    echo "deploy-flake-state ${state:-unknown}"
    if [ "$nfailed" != 0 ]; then
        systemctl list-units --failed --plain --no-legend --no-pager 2> /dev/null | awk '{print "deploy-flake-failed " $1}'
    fi
    if [ -n "$rundir" ] && [ -e "$rundir/failed-before" ]; then
        tr ' ' '\n' < "$rundir/failed-before" | awk 'NF {print "deploy-flake-failed-already " $1}'
    fi
}

# What a soak looks at: the health, and what the host runs. Read from
# stdin, like `status`: nothing needs to be installed (after a reboot by
# someone else nothing is).
look() {
    health "$@"
    echo "deploy-flake-current $(readlink -e "$CURRENT")"
}

# reboot_for KEY SYSTEM: what differs between the booted system and SYSTEM
# that only a reboot brings in (kernel, initrd, kernel modules, init).
reboot_for() {
    [ -e /run/booted-system ] && [ -n "$2" ] || return 0
    for part in kernel initrd kernel-modules; do
        if [ "$(readlink -f "/run/booted-system/$part")" != "$(readlink -f "$2/$part")" ]; then
            echo "deploy-flake-$1 $part"
        fi
    done
    if [ "$(cat /run/booted-system/init-interface-version 2> /dev/null)" != "$(cat "$2/init-interface-version" 2> /dev/null)" ]; then
        echo "deploy-flake-$1 init"
    fi
}

facts() {
    toplevel=$1 selfcheck=${2:-pre-activate-safety-checks}
    profile=$(readlink -e "$PROFILE")
    echo "deploy-flake-current $(readlink -e "$CURRENT")"
    echo "deploy-flake-profile $profile"
    echo "deploy-flake-booted-system $(readlink -e /run/booted-system)"
    echo "deploy-flake-newest-generation $(newest_generation)"
    entry=$(default_entry)
    if [ -n "$entry" ]; then echo "deploy-flake-default-entry $entry"; fi
    if [ -x "$toplevel/bin/switch-to-configuration" ]; then echo "deploy-flake-switchable yes"; fi
    if [ -x "$toplevel/$selfcheck" ]; then echo "deploy-flake-self-check-script $toplevel/$selfcheck"; fi
    if [ -d /run/systemd/system ]; then echo "deploy-flake-systemd yes"; fi
    if recorded confirmed "$toplevel"; then echo "deploy-flake-confirmed-here yes"; fi
    if recorded booted "$toplevel"; then echo "deploy-flake-boot-written yes"; fi
    reboot_for reboot-new "$toplevel"
    reboot_for reboot-profile "$profile"
    switches_in_progress
}

status() {
    profile=$(readlink -e "$PROFILE")
    echo "deploy-flake-current $(readlink -e "$CURRENT")"
    echo "deploy-flake-profile $profile"
    echo "deploy-flake-booted-system $(readlink -e /run/booted-system)"
    echo "deploy-flake-boot-id $(cat /proc/sys/kernel/random/boot_id)"
    entry=$(default_entry)
    if [ -n "$entry" ]; then echo "deploy-flake-default-entry $entry"; fi
    echo "deploy-flake-state $(systemctl is-system-running 2> /dev/null)"
    systemctl list-units --failed --plain --no-legend --no-pager 2> /dev/null | awk '{print "deploy-flake-failed " $1}'
    reboot_for reboot-profile "$profile"
    # The lock as its holder left it, when the holder is alive: one killed
    # by a signal cannot say it let go.
    if [ -s "$STATE/lock.info" ]; then
        pid='' holder=''
        if [ -s "$STATE/lock.pid" ]; then read -r pid holder < "$STATE/lock.pid"; fi
        if [ -z "$pid" ] || holder_alive "$pid" "$holder"; then
            echo "deploy-flake-lock $(cat "$STATE/lock.info")"
        fi
    fi
    if [ -e "$RECORDS/last" ]; then sed 's/^/deploy-flake-last-/' "$RECORDS/last"; fi
    switches_in_progress
}

# What activating TOPLEVEL would change. A part whose command failed is
# said to be unknown, with why (never "nothing").
diff() {
    toplevel=$1
    current=$(readlink -e "$CURRENT")
    if [ -z "$current" ]; then
        echo "deploy-flake-packages-unknown the host runs no system to compare with"
    else
        # What Nix says (its warnings, its error) goes on to stderr, which
        # the deployer shows; its last words also say why on a failure.
        said=$(mktemp) || said=/dev/null
        out=$(nix --extra-experimental-features nix-command store diff-closures "$current" "$toplevel" 2> "$said")
        rc=$?
        cat "$said" >&2
        if [ "$rc" = 0 ]; then
            printf '%s\n' "$out" | sed '/^$/d; s/^/deploy-flake-package /'
        else
            echo "deploy-flake-packages-unknown nix store diff-closures exited with $rc: $(last_words "$(cat "$said")")"
        fi
        [ "$said" = /dev/null ] || rm -f "$said"
        nix --extra-experimental-features nix-command path-info --closure-size "$current" "$toplevel" |
            awk '{print "deploy-flake-closure " $1 " " $2}'
    fi
    out=$("$toplevel/bin/switch-to-configuration" dry-activate 2>&1 < /dev/null)
    rc=$?
    if [ "$rc" = 0 ]; then
        printf '%s\n' "$out" | sed -n 's/^would \(stop\|restart\|start\|reload\) the following units: /deploy-flake-units \1 /p'
    else
        echo "deploy-flake-units-unknown switch-to-configuration dry-activate exited with $rc: $(last_words "$out")"
    fi
    echo "deploy-flake-booted-system $(readlink -e /run/booted-system)"
    reboot_for reboot-new "$toplevel"
}
