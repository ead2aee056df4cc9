# shellcheck shell=sh
# The boot entry of a confirmed system.
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

# The system the newest generation of the system profile points at: what
# a bootloader that keeps only the newest entries boots.
newest_generation() {
    newest_link='' newest_number=0
    for newest_each in "$PROFILE"-*-link; do
        newest_each_number=${newest_each#"$PROFILE"-}
        newest_each_number=${newest_each_number%-link}
        case "$newest_each_number" in '' | *[!0-9]*) continue ;; esac
        if [ "$newest_each_number" -gt "$newest_number" ]; then newest_number=$newest_each_number newest_link=$newest_each; fi
    done
    if [ -n "$newest_link" ]; then readlink -f "$newest_link"; fi
}

# The system the bootloader's default entry boots, where the bootloader
# says it (systemd-boot's loader.conf and its entry: a `system` line, or
# the `init=` of its options); nothing where it does not.
default_entry() {
    for entry_conf in /boot/loader/loader.conf /boot/efi/loader/loader.conf /efi/loader/loader.conf; do
        [ -r "$entry_conf" ] || continue
        entry_name=$(sed -n 's/^default[[:space:]][[:space:]]*//p' "$entry_conf" | tail -n 1)
        case "$entry_name" in '' | */* | *[*?@]*) return 0 ;; esac
        entry_file=${entry_conf%/loader.conf}/entries/$entry_name
        [ -r "$entry_file" ] || return 0
        entry_sys=$(sed -n 's/^system[[:space:]][[:space:]]*//p' "$entry_file" | tail -n 1)
        if [ -z "$entry_sys" ]; then
            entry_sys=$(sed -n 's|^options.*init=\(/nix/store/[^/ ]*\)/init.*|\1|p' "$entry_file" | tail -n 1)
        fi
        if [ -n "$entry_sys" ]; then printf '%s\n' "$entry_sys"; fi
        return 0
    done
}

# boot [ENV...]: the run's system becomes what the host boots: the newest
# generation of the system profile, and the bootloader's entry.
boot() {
    stc_env "$@"
    set_status booting
    boot_before=$(readlink -f "$PROFILE" 2> /dev/null)
    boot_profile "$boot_before" || return 0
    boot_logged=$(wc -l < "$rundir/log" 2> /dev/null || echo 0)
    sysrc="$rundir/exit-status"
    # shellcheck disable=SC2086 # allow-listed words
    system env $stc_env "$toplevel/bin/switch-to-configuration" boot | cap_lines >> "$rundir/log"
    read -r boot_rc < "$sysrc" || boot_rc=1
    rm -f "$sysrc"
    # The system profile holds the system now.
    rm -f "$rundir/toplevel"
    if [ "$boot_rc" = 0 ]; then
        boot_written
    else
        boot_failed "$boot_rc" "$boot_logged" "$boot_before"
    fi
}

# boot_profile BEFORE: the newest generation is what every bootloader boots
# (systemd-boot keeps only the newest ones, and its default is the one of
# the system only among those). Unless it is the run's system already, the
# profile (at BEFORE) gets a new generation of it, also when an older
# generation (switched to, or rolled back to) points at it ($boot_moved
# says so). 1 when it could not: the run ended here.
boot_profile() {
    sysrc="$rundir/exit-status" boot_moved=''
    if [ "$(newest_generation)" != "$toplevel" ]; then
        system nix-env -p "$PROFILE" --set "$toplevel" | cap_lines >> "$rundir/log"
        boot_moved=1
    fi
    if [ "$(readlink -f "$PROFILE")" != "$toplevel" ] || [ "$(newest_generation)" != "$toplevel" ]; then
        set_status boot-failed boot-entry "the system profile could not be given a newest generation of $toplevel; it points at ${1:-nothing}"
        return 1
    fi
}

# boot_written: switch-to-configuration boot succeeded; so it did when the
# bootloader's default entry, where it says it, is the run's system.
boot_written() {
    boot_entry=$(default_entry)
    if [ -n "$boot_entry" ] && [ "$boot_entry" != "$toplevel" ]; then
        set_status boot-failed boot-entry "switch-to-configuration boot succeeded, but the bootloader's default entry boots $boot_entry, not $toplevel"
        return
    fi
    record booted "$toplevel"
    set_status booted
}

# boot_failed RC LOGGED BEFORE: switch-to-configuration boot exited with
# RC, what it said in the log after its line LOGGED; the profile pointed at
# BEFORE.
boot_failed() {
    if [ "$1" = 1 ] && sed -n "$(($2 + 1)),\$p" "$rundir/log" | grep -q "Pre-switch checks failed"; then
        # Refused before the bootloader was touched: the profile points at
        # exactly what it did before (not at "the generation before").
        if [ -n "$boot_moved" ] && [ -n "$3" ]; then
            system nix-env -p "$PROFILE" --set "$3" | cap_lines >> "$rundir/log"
        fi
        set_status boot-failed pre-switch-check "the pre-switch checks refused the boot entry; the system profile points at $(readlink -f "$PROFILE") again"
    elif [ "$1" = 11 ]; then
        set_status boot-failed busy "another switch-to-configuration holds its lock; the system profile points at $toplevel, but its boot entry was not written"
    else
        set_status boot-failed boot-entry "switch-to-configuration boot exited with $1: the system profile points at $toplevel, but the bootloader was not updated and may still boot the previous system"
    fi
}
