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
    staged=$rundir/staged-keys
    rm -rf "$staged" && mkdir -m 0700 "$staged" || exit 1
    if [ "${1:-}" = keep ]; then : > "$rundir/keys-keep"; fi
    n=0
    while IFS= read -r at; do
        if ! { IFS= read -r dir && IFS= read -r name && IFS= read -r user && IFS= read -r group &&
            IFS= read -r mode && IFS= read -r len; }; then
            echo "deploy-flake agent: the keys ended early" >&2
            rm -rf "$staged"
            exit 1
        fi
        n=$((n + 1))
        head -c "$len" > "$staged/$n"
        if [ "$(wc -c < "$staged/$n")" != "$len" ]; then
            echo "deploy-flake agent: key $name: fewer bytes than announced" >&2
            rm -rf "$staged"
            exit 1
        fi
        printf '%s\n' "$at" "$dir" "$name" "$user" "$group" "$mode" > "$staged/$n.meta"
        keys_dir_safe "$dir" || { rm -rf "$staged"; exit 1; }
        keys_prune "$dir"
        if [ "$at" = pre-activation ] && ! keys_owner_exists "$user" "$group"; then
            echo "key $name: $user:$group does not exist yet: written as root:root, given to $user:$group once the new system has created them"
        fi
    done
    echo "deploy-flake-keys-staged $n"
}

# keys_prune DIR: drop what runs that are gone (the host rebooted, their
# state was removed) kept there of the keys they replaced.
keys_prune() {
    for kept in "$1"/.deploy-flake-previous/*; do
        [ -d "$kept" ] || continue
        [ -d "$STATE/runs/${kept##*/}" ] || rm -rf "$kept"
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
    staged=$rundir/staged-keys
    [ -d "$staged" ] || return 0
    for meta in "$staged"/*.meta; do
        [ -e "$meta" ] || continue
        {
            IFS= read -r at
            IFS= read -r dir
            IFS= read -r name
            IFS= read -r user
            IFS= read -r group
            IFS= read -r mode
        } < "$meta"
        case "$1:$at" in
            pre:pre-activation | post:post-activation | all:*) ;;
            pre:remove)
                key_remove "$dir/$name" || return 1
                rm -f "${meta%.meta}" "$meta"
                continue
                ;;
            *) continue ;;
        esac
        lenient=0
        if [ "$1" = pre ]; then lenient=1; fi
        key_write "${meta%.meta}" "$dir" "$name" "$user" "$group" "$mode" "$lenient" || return 1
        rm -f "${meta%.meta}" "$meta"
    done
}

# key_write STAGED DIR NAME USER GROUP MODE LENIENT: with LENIENT 1 (before
# the switch), an owner the new system has yet to create gets the key
# once it has (keys_own); until then it is root's.
key_write() {
    file=$2/$3 owner=$4:$5
    if ! keys_owner_exists "$4" "$5"; then
        if [ "$7" != 1 ]; then
            log "key $3: user $4 or group $5 does not exist"
            return 1
        fi
        owner=root:root
        printf '%s %s\n' "$4:$5" "$file" >> "$rundir/keys-owners"
    fi
    if ! { keys_dir_safe "$2" && keys_dir "$2"; }; then
        log "key $3: cannot create or use $2"
        return 1
    fi
    tmp=$2/.deploy-flake-new.$3
    rm -f "$tmp"
    if ! { (umask 077 && : > "$tmp") && chown "$owner" "$tmp" && chmod "$6" "$tmp" && cat "$1" > "$tmp"; }; then
        rm -f "$tmp"
        log "key $3: cannot write $tmp"
        return 1
    fi
    if [ -e "$file" ] || [ -L "$file" ]; then
        key_keep "$file" || { rm -f "$tmp"; return 1; }
    else
        echo "new $file" >> "$rundir/keys-written"
    fi
    mv -fT "$tmp" "$file" || { log "key $3: cannot replace $file"; return 1; }
    log "key $3: wrote $file"
}

# key_keep FILE: keep FILE's content as its previous one (a hard link in a
# root-only directory beside it), and record that this run had it.
key_keep() {
    previous_dir=${1%/*}/.deploy-flake-previous
    if ! { { [ -d "$previous_dir" ] || mkdir -m 0700 "$previous_dir"; } &&
        { [ -d "$previous_dir/$runid" ] || mkdir -m 0700 "$previous_dir/$runid"; } &&
        ln -P "$1" "$previous_dir/$runid/${1##*/}"; }; then
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
    from=$1
    staged=$rundir/staged-keys
    rm -rf "$staged" && mkdir -m 0700 "$staged" || exit 1
    n=0
    if [ -e "$from/keys-written" ]; then
        printf '%s\n' "$from" > "$rundir/keys-adopted"
        while read -r what file; do
            n=$((n + 1))
            dir=${file%/*} name=${file##*/}
            if [ "$what" = new ]; then
                printf '%s\n' remove "$dir" "$name" root root 0600 > "$staged/$n.meta"
                : > "$staged/$n"
                continue
            fi
            kept=$dir/.deploy-flake-previous/${from##*/}/$name
            [ -f "$kept" ] || continue
            cat "$kept" > "$staged/$n" || exit 1
            # shellcheck disable=SC2046 # three words
            printf '%s\n' pre-activation "$dir" "$name" $(stat -c '%u %g %a' "$kept") > "$staged/$n.meta"
        done < "$from/keys-written"
    fi
    echo "deploy-flake-keys-staged $n"
}

# The run this one put back the keys of: its kept content is not needed.
keys_forget_adopted() {
    [ -e "$rundir/keys-adopted" ] || return 0
    read -r from < "$rundir/keys-adopted"
    keys_drop_previous "$from"
    rm -f "$rundir/keys-adopted"
}

# keys_drop_previous RUNDIR: what that run kept of the keys it replaced.
keys_drop_previous() {
    [ -e "$1/keys-written" ] || return 0
    while read -r _ file; do
        rm -rf "${file%/*}/.deploy-flake-previous/${1##*/}"
        rmdir "${file%/*}/.deploy-flake-previous" 2> /dev/null
    done < "$1/keys-written"
    rm -f "$1/keys-written" "$1/keys-keep"
}

# Give the keys written as root:root to their owners, now that the new
# system has created them.
keys_own() {
    [ -e "$rundir/keys-owners" ] || return 0
    while read -r owner file; do
        if chown "$owner" "$file" 2> /dev/null; then log "key ${file##*/}: given to $owner"; else log "key ${file##*/}: $owner still does not exist: it stays root's"; fi
    done < "$rundir/keys-owners"
    rm -f "$rundir/keys-owners"
}

# keys_restore: the keys as they were before this run (rollback).
keys_restore() {
    keys_forget_adopted
    rm -rf "$rundir/staged-keys" "$rundir/keys-owners"
    [ -e "$rundir/keys-written" ] || return 0
    # Newest first.
    sed -n '1!G;h;$p' "$rundir/keys-written" | while read -r what file; do
        dir=${file%/*}
        case "$what" in
            had)
                mv -fT "$dir/.deploy-flake-previous/$runid/${file##*/}" "$file" && log "key ${file##*/}: restored $file"
                ;;
            new) rm -f "$file" && log "key ${file##*/}: removed $file" ;;
        esac
        rmdir "$dir/.deploy-flake-previous/$runid" "$dir/.deploy-flake-previous" 2> /dev/null
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
