# shellcheck shell=sh
# (A part of the agent: src/agent/mod.rs joins src/agent/sh/*.sh in the
# order of their names into the one text that runs on a target.)

# Secrets the deployer sends on stdin (never in an argument or the
# environment), staged root-only in the run directory, then written to
# their files: a temporary file in the same directory, owner and mode set
# before any content, then a rename. The previous content of a file this
# run replaces is kept, root-only, beside it (DIR/.deploy-flake-previous/
# RUNID/NAME, a hard link: the same file system, so a key in /run/keys
# never reaches a disk); a rollback puts it back and removes the files
# this run created, a confirmation drops it.

# keys_dir_safe DIR: DIR is missing, or a directory only root may change
# (root writes files there: no one else may swap them underneath).
keys_dir_safe() {
    [ -e "$1" ] || [ -L "$1" ] || return 0
    if [ -L "$1" ] || [ ! -d "$1" ]; then
        echo "deploy-flake agent: key directory $1 is not a directory" >&2
        return 1
    fi
    if [ -n "$(find "$1" -maxdepth 0 \( ! -user 0 -o -perm /022 \) 2> /dev/null)" ]; then
        echo "deploy-flake agent: key directory $1 may be changed by others than root (owner $(stat -c %U "$1"), mode $(stat -c %a "$1")): make it root's, writable by root only" >&2
        return 1
    fi
}

# keys_dir DIR: create it root-owned 0750 (group keys, where there is one),
# its parents 0755.
keys_dir() {
    [ -d "$1" ] && return 0
    (umask 022 && mkdir -p "${1%/*}") && mkdir -m 0750 "$1" || return 1
    if getent group keys > /dev/null 2>&1; then chgrp keys "$1"; fi
}

keys_stage() {
    stage_dir=$rundir/staged-keys
    rm -rf "$stage_dir" && mkdir -m 0700 "$stage_dir" || exit 1
    if [ "${1:-}" = keep ]; then : > "$rundir/keys-keep"; fi
    stage_n=0
    while IFS= read -r stage_at; do
        if ! { IFS= read -r stage_keydir && IFS= read -r stage_name && IFS= read -r stage_user && IFS= read -r stage_group &&
            IFS= read -r stage_mode && IFS= read -r stage_len; }; then
            echo "deploy-flake agent: the keys ended early" >&2
            rm -rf "$stage_dir"
            exit 1
        fi
        stage_n=$((stage_n + 1))
        head -c "$stage_len" > "$stage_dir/$stage_n"
        if [ "$(wc -c < "$stage_dir/$stage_n")" != "$stage_len" ]; then
            echo "deploy-flake agent: key $stage_name: fewer bytes than announced" >&2
            rm -rf "$stage_dir"
            exit 1
        fi
        printf '%s\n' "$stage_at" "$stage_keydir" "$stage_name" "$stage_user" "$stage_group" "$stage_mode" > "$stage_dir/$stage_n.meta"
        keys_dir_safe "$stage_keydir" || { rm -rf "$stage_dir"; exit 1; }
        keys_prune "$stage_keydir"
        if [ "$stage_at" = pre-activation ] && ! keys_owner_exists "$stage_user" "$stage_group"; then
            echo "key $stage_name: $stage_user:$stage_group does not exist yet: written as root:root, given to $stage_user:$stage_group once the new system has created them"
        fi
    done
    echo "deploy-flake-keys-staged $stage_n"
}

# keys_prune DIR: drop what runs that are gone (the host rebooted, their
# state was removed) kept there of the keys they replaced.
keys_prune() {
    for kprune_each in "$1"/.deploy-flake-previous/*; do
        [ -d "$kprune_each" ] || continue
        [ -d "$STATE/runs/${kprune_each##*/}" ] || rm -rf "$kprune_each"
    done
    rmdir "$1/.deploy-flake-previous" 2> /dev/null
    return 0
}

keys_owner_exists() {
    getent passwd "$1" > /dev/null 2>&1 && getent group "$2" > /dev/null 2>&1
}

# keys_install pre|post|all: write the staged keys of that upload time.
# Stops at the first that cannot be written (what was written stays
# recorded for keys_restore).
keys_install() {
    install_staged=$rundir/staged-keys
    [ -d "$install_staged" ] || return 0
    for install_meta in "$install_staged"/*.meta; do
        [ -e "$install_meta" ] || continue
        {
            IFS= read -r install_at
            IFS= read -r install_dir
            IFS= read -r install_name
            IFS= read -r install_user
            IFS= read -r install_group
            IFS= read -r install_mode
        } < "$install_meta"
        case "$1:$install_at" in
            pre:pre-activation | post:post-activation | all:*) ;;
            pre:remove)
                key_remove "$install_dir/$install_name" || return 1
                rm -f "${install_meta%.meta}" "$install_meta"
                continue
                ;;
            *) continue ;;
        esac
        install_lenient=0
        if [ "$1" = pre ]; then install_lenient=1; fi
        key_write "${install_meta%.meta}" "$install_dir" "$install_name" "$install_user" "$install_group" "$install_mode" "$install_lenient" || return 1
        rm -f "${install_meta%.meta}" "$install_meta"
    done
}

# key_write STAGED DIR NAME USER GROUP MODE LENIENT: with LENIENT 1 (before
# the switch), an owner the new system has yet to create gets the key
# once it has (keys_own); until then it is root's.
key_write() {
    write_file=$2/$3 write_owner=$4:$5
    if ! keys_owner_exists "$4" "$5"; then
        if [ "$7" != 1 ]; then
            log "key $3: user $4 or group $5 does not exist"
            return 1
        fi
        write_owner=root:root
        printf '%s %s\n' "$4:$5" "$write_file" >> "$rundir/keys-owners"
    fi
    if ! { keys_dir_safe "$2" && keys_dir "$2"; }; then
        log "key $3: cannot create or use $2"
        return 1
    fi
    write_tmp=$2/.deploy-flake-new.$3
    rm -f "$write_tmp"
    if ! { (umask 077 && : > "$write_tmp") && chown "$write_owner" "$write_tmp" && chmod "$6" "$write_tmp" && cat "$1" > "$write_tmp"; }; then
        rm -f "$write_tmp"
        log "key $3: cannot write $write_tmp"
        return 1
    fi
    if [ -e "$write_file" ] || [ -L "$write_file" ]; then
        key_keep "$write_file" || { rm -f "$write_tmp"; return 1; }
    else
        echo "new $write_file" >> "$rundir/keys-written"
    fi
    mv -fT "$write_tmp" "$write_file" || { log "key $3: cannot replace $write_file"; return 1; }
    log "key $3: wrote $write_file"
}

# key_keep FILE: keep FILE's content as its previous one (a hard link in a
# root-only directory beside it), and record that this run had it.
key_keep() {
    keep_dir=${1%/*}/.deploy-flake-previous
    if ! { { [ -d "$keep_dir" ] || mkdir -m 0700 "$keep_dir"; } &&
        { [ -d "$keep_dir/$runid" ] || mkdir -m 0700 "$keep_dir/$runid"; } &&
        ln -P "$1" "$keep_dir/$runid/${1##*/}"; }; then
        log "key ${1##*/}: cannot keep the previous content of $1"
        return 1
    fi
    echo "had $1" >> "$rundir/keys-written"
}

# key_remove FILE: a key the run being reverted created.
key_remove() {
    [ -e "$1" ] || [ -L "$1" ] || return 0
    key_keep "$1" && rm -f "$1" && log "key ${1##*/}: removed $1"
}

# keys_adopt FROM: stage what run FROM's keys were before it (their
# kept content, their owner and mode), and the removal of those it created.
keys_adopt() {
    adopt_from=$1
    adopt_staged=$rundir/staged-keys
    rm -rf "$adopt_staged" && mkdir -m 0700 "$adopt_staged" || exit 1
    adopt_n=0
    if [ -e "$adopt_from/keys-written" ]; then
        printf '%s\n' "$adopt_from" > "$rundir/keys-adopted"
        while read -r adopt_what adopt_file; do
            adopt_n=$((adopt_n + 1))
            adopt_dir=${adopt_file%/*} adopt_name=${adopt_file##*/}
            if [ "$adopt_what" = new ]; then
                printf '%s\n' remove "$adopt_dir" "$adopt_name" root root 0600 > "$adopt_staged/$adopt_n.meta"
                : > "$adopt_staged/$adopt_n"
                continue
            fi
            adopt_kept=$adopt_dir/.deploy-flake-previous/${adopt_from##*/}/$adopt_name
            [ -f "$adopt_kept" ] || continue
            cat "$adopt_kept" > "$adopt_staged/$adopt_n" || exit 1
            # shellcheck disable=SC2046 # three words
            printf '%s\n' pre-activation "$adopt_dir" "$adopt_name" $(stat -c '%u %g %a' "$adopt_kept") > "$adopt_staged/$adopt_n.meta"
        done < "$adopt_from/keys-written"
    fi
    echo "deploy-flake-keys-staged $adopt_n"
}

# The run this one put back the keys of: its kept content is not needed.
keys_forget_adopted() {
    [ -e "$rundir/keys-adopted" ] || return 0
    read -r forget_from < "$rundir/keys-adopted"
    keys_drop_previous "$forget_from"
    rm -f "$rundir/keys-adopted"
}

# keys_drop_previous RUNDIR: what that run kept of the keys it replaced.
keys_drop_previous() {
    [ -e "$1/keys-written" ] || return 0
    while read -r _ dropped_file; do
        rm -rf "${dropped_file%/*}/.deploy-flake-previous/${1##*/}"
        rmdir "${dropped_file%/*}/.deploy-flake-previous" 2> /dev/null
    done < "$1/keys-written"
    rm -f "$1/keys-written" "$1/keys-keep"
}

# Give the keys written as root:root to their owners, now that the new
# system has created them.
keys_own() {
    [ -e "$rundir/keys-owners" ] || return 0
    while read -r own_owner own_file; do
        if chown "$own_owner" "$own_file" 2> /dev/null; then log "key ${own_file##*/}: given to $own_owner"; else log "key ${own_file##*/}: $own_owner still does not exist: it stays root's"; fi
    done < "$rundir/keys-owners"
    rm -f "$rundir/keys-owners"
}

# keys_restore: the keys as they were before this run (rollback).
keys_restore() {
    keys_forget_adopted
    rm -rf "$rundir/staged-keys" "$rundir/keys-owners"
    [ -e "$rundir/keys-written" ] || return 0
    # Newest first.
    sed -n '1!G;h;$p' "$rundir/keys-written" | while read -r restore_what restore_file; do
        restore_dir=${restore_file%/*}
        case "$restore_what" in
            had)
                mv -fT "$restore_dir/.deploy-flake-previous/$runid/${restore_file##*/}" "$restore_file" && log "key ${restore_file##*/}: restored $restore_file"
                ;;
            new) rm -f "$restore_file" && log "key ${restore_file##*/}: removed $restore_file" ;;
        esac
        rmdir "$restore_dir/.deploy-flake-previous/$runid" "$restore_dir/.deploy-flake-previous" 2> /dev/null
    done
    rm -f "$rundir/keys-written"
}

# keys_drop [force]: the previous keys are not needed (confirmed); kept
# when the deployer said it drops them itself (a soak follows).
keys_drop() {
    keys_forget_adopted
    rm -rf "$rundir/staged-keys" "$rundir/keys-owners"
    if [ -e "$rundir/keys-keep" ] && [ "${1:-}" != force ]; then return 0; fi
    keys_drop_previous "$rundir"
}

# The deployer's `deploy-flake keys`: stage and write every key now.
keys_upload() {
    keys_stage > /dev/null || exit 1
    if keys_install all; then
        keys_drop force
        echo "deploy-flake-keys-uploaded yes"
    else
        keys_restore
        exit 1
    fi
}
