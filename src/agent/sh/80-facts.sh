# shellcheck shell=sh
# Read-only answers: the pre-switch check, the health, what the host
# runs and boots, and what a new system would change.
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

# Runs `switch-to-configuration check`: the pre-switch checks and the
# switch inhibitors, before anything changes; after SELFCHECK, when given
# (a failing one ends it, its exit status said).
check() {
    check_secs=$1 check_self=$2
    shift 2
    stc_env "$@"
    sysrc="$STATE/.exit-status.$$"
    if [ -n "$check_self" ]; then
        check_out=$(system timeout "$check_secs" "$check_self" | cap_lines)
        read -r check_rc < "$sysrc" || check_rc=1
        if [ -n "$check_out" ]; then printf '%s\n' "$check_out"; fi
        echo "deploy-flake-self-check-exit $check_rc"
        [ "$check_rc" = 0 ] || { rm -f "$sysrc"; return 0; }
    fi
    # shellcheck disable=SC2086 # allow-listed words
    check_out=$(system timeout "$check_secs" env $stc_env "$toplevel/bin/switch-to-configuration" check | cap_lines)
    read -r check_rc < "$sysrc" || check_rc=1
    rm -f "$sysrc"
    printf '%s\n' "$check_out"
    # What it means (refused, busy, unsupported) the deployer decides.
    echo "deploy-flake-check-exit $check_rc"
}

health() {
    health_secs=$1
    # One question to systemd when the system is up: its state and how
    # many units failed; their names only when some did. A systemd that
    # does not answer for a moment (busy, or re-executing itself) is asked
    # again, within SECS (only where systemd runs the host).
    uptime_now
    health_until=$((now + health_secs))
    while :; do
        health_state='' health_nfailed=''
        for health_prop in $(systemctl show --property=SystemState --property=NFailedUnits 2> /dev/null); do
            case "$health_prop" in
                SystemState=*) health_state=${health_prop#*=} ;;
                NFailedUnits=*) health_nfailed=${health_prop#*=} ;;
            esac
        done
        uptime_now
        if [ -n "$health_state" ] || [ "$now" -ge "$health_until" ] || [ ! -d /run/systemd/system ]; then break; fi
        sleep 0.5
    done
    case "$health_state" in
        initializing | starting | '')
            health_left=$((health_until > now ? health_until - now : 1))
            health_state=$(timeout "$health_left" systemctl is-system-running --wait 2> /dev/null)
            if [ "$?" = 124 ]; then health_state="still-starting-after-${health_secs}s"; fi
            health_nfailed=''
            ;;
    esac
    echo "deploy-flake-state ${health_state:-unknown}"
    if [ "$health_nfailed" != 0 ]; then
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
    health "$1"
    echo "deploy-flake-current $(readlink -e "$CURRENT")"
}

# boot_parts KEY SYSTEM: what of SYSTEM only a reboot brings in (its
# kernel, initrd and kernel modules, resolved, and its init interface's
# version), as "deploy-flake-KEY <part> <value>" lines: the deployer
# compares them with the booted system's (parts-booted).
boot_parts() {
    [ -n "$2" ] || return 0
    for parts_part in kernel initrd kernel-modules; do
        echo "deploy-flake-$1 $parts_part $(readlink -f "$2/$parts_part")"
    done
    echo "deploy-flake-$1 init $(tr '\n' ' ' 2> /dev/null < "$2/init-interface-version")"
}

# The parts of the booted system, where the host says what it booted.
booted_parts() {
    if [ -e /run/booted-system ]; then boot_parts parts-booted /run/booted-system; fi
}

# say_systems PROFILE: what the host runs, its profile (PROFILE, resolved),
# what it booted and its bootloader's default entry: what facts and status
# both answer.
say_systems() {
    echo "deploy-flake-current $(readlink -e "$CURRENT")"
    echo "deploy-flake-profile $1"
    echo "deploy-flake-booted-system $(readlink -e /run/booted-system)"
    say_entry=$(default_entry)
    if [ -n "$say_entry" ]; then echo "deploy-flake-default-entry $say_entry"; fi
}

facts() {
    facts_self=${1:-pre-activate-safety-checks}
    facts_profile=$(readlink -e "$PROFILE")
    say_systems "$facts_profile"
    echo "deploy-flake-newest-generation $(newest_generation)"
    if [ -x "$toplevel/bin/switch-to-configuration" ]; then echo "deploy-flake-switchable yes"; fi
    if [ -x "$toplevel/$facts_self" ]; then echo "deploy-flake-self-check-script $toplevel/$facts_self"; fi
    if [ -d /run/systemd/system ]; then echo "deploy-flake-systemd yes"; fi
    if recorded confirmed "$toplevel"; then echo "deploy-flake-confirmed-here yes"; fi
    if recorded booted "$toplevel"; then echo "deploy-flake-boot-written yes"; fi
    booted_parts
    boot_parts parts-new "$toplevel"
    boot_parts parts-profile "$facts_profile"
    switches_in_progress
}

status() {
    status_profile=$(readlink -e "$PROFILE")
    say_systems "$status_profile"
    echo "deploy-flake-boot-id $(cat /proc/sys/kernel/random/boot_id)"
    echo "deploy-flake-state $(systemctl is-system-running 2> /dev/null)"
    systemctl list-units --failed --plain --no-legend --no-pager 2> /dev/null | awk '{print "deploy-flake-failed " $1}'
    booted_parts
    boot_parts parts-profile "$status_profile"
    # The lock as its holder left it, when the holder is alive: one killed
    # by a signal cannot say it let go.
    if [ -s "$STATE/lock.info" ]; then
        status_pid='' status_holder=''
        if [ -s "$STATE/lock.pid" ]; then read -r status_pid status_holder < "$STATE/lock.pid"; fi
        if [ -z "$status_pid" ] || holder_alive "$status_pid" "$status_holder"; then
            echo "deploy-flake-lock $(cat "$STATE/lock.info")"
        fi
    fi
    if [ -e "$RECORDS/last" ]; then sed 's/^/deploy-flake-last-/' "$RECORDS/last"; fi
    switches_in_progress
}

# What activating TOPLEVEL would change. A part whose command failed is
# said to be unknown, with why (never "nothing").
diff() {
    diff_current=$(readlink -e "$CURRENT")
    if [ -z "$diff_current" ]; then
        echo "deploy-flake-packages-unknown the host runs no system to compare with"
    else
        # What Nix says (its warnings, its error) goes on to stderr, which
        # the deployer shows; its last words also say why on a failure.
        diff_said=$(mktemp) || diff_said=/dev/null
        diff_out=$(nix --extra-experimental-features nix-command store diff-closures "$diff_current" "$toplevel" 2> "$diff_said")
        diff_rc=$?
        cat "$diff_said" >&2
        if [ "$diff_rc" = 0 ]; then
            printf '%s\n' "$diff_out" | sed '/^$/d; s/^/deploy-flake-package /'
        else
            echo "deploy-flake-packages-unknown nix store diff-closures exited with $diff_rc: $(last_words "$(cat "$diff_said")")"
        fi
        [ "$diff_said" = /dev/null ] || rm -f "$diff_said"
        nix --extra-experimental-features nix-command path-info --closure-size "$diff_current" "$toplevel" |
            awk '{print "deploy-flake-closure " $1 " " $2}'
    fi
    diff_out=$("$toplevel/bin/switch-to-configuration" dry-activate 2>&1 < /dev/null)
    diff_rc=$?
    if [ "$diff_rc" = 0 ]; then
        printf '%s\n' "$diff_out" | sed -n 's/^would \(stop\|restart\|start\|reload\) the following units: /deploy-flake-units \1 /p'
    else
        echo "deploy-flake-units-unknown switch-to-configuration dry-activate exited with $diff_rc: $(last_words "$diff_out")"
    fi
    echo "deploy-flake-booted-system $(readlink -e /run/booted-system)"
    booted_parts
    boot_parts parts-new "$toplevel"
}
