#!/usr/bin/env bash
# Build (once) and print the path of the lab's target root file system.
#
#   tests/lab/rootfs.sh SUITE        SUITE = bookworm | trixie | sid
#
# The result is cached outside the checkout, in
# ${DEPLOY_FLAKE_LAB_CACHE:-/var/cache/deploy-flake-lab}/<suite>-<hash>, where
# <hash> is the sha256 of this script: everything the root file system
# contains is written by the recipe below, so a changed recipe is a new cache
# entry. The tree is built in a temporary directory and renamed into place, so
# a reader never sees half a root file system; a lock makes parallel callers
# wait for one build instead of running two.
#
# What the root file system is: Debian with real systemd,
# sshd and a Nix daemon, plus a systemd generator that makes
# /run/current-system behave like on NixOS. No ssh key is baked in: lab.sh
# writes host keys and authorized keys per target at boot.
set -euo pipefail

self=$(readlink -f "${BASH_SOURCE[0]}")

die() { printf 'rootfs.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# The generator that stands in for NixOS's activation at boot. It runs at
# every boot and at every `systemctl daemon-reload`:
#  (a) at boot (no /run/current-system yet) it points /run/current-system and
#      /run/booted-system at the system of the bootloader's default entry
#      (/boot/loader/loader.conf, written by `switch-to-configuration boot`),
#      falling back to the system profile;
#  (b) it emits every unit of /run/current-system/etc/systemd/system into the
#      generator directory, wanted by multi-user.target, so the units systemd
#      runs always follow /run/current-system.
read -r -d '' GENERATOR <<'EOF' || true
#!/bin/sh
# nixos-standin: make /run/current-system drive the running units (lab only).
out="${1:-/tmp}"
if [ ! -e /run/current-system ]; then
    target=""
    entry=$(sed -n 's/^default //p' /boot/loader/loader.conf 2>/dev/null)
    if [ -n "$entry" ] && [ -r "/boot/loader/entries/$entry" ]; then
        target=$(sed -n 's/^system //p' "/boot/loader/entries/$entry")
    fi
    if [ -z "$target" ] || [ ! -d "$target" ]; then
        target=$(readlink -f /nix/var/nix/profiles/system 2>/dev/null || true)
    fi
    if [ -n "$target" ] && [ -d "$target" ]; then
        ln -sfn "$target" /run/current-system
        ln -sfn "$target" /run/booted-system
    fi
fi
units=/run/current-system/etc/systemd/system
[ -d "$units" ] || exit 0
mkdir -p "$out/multi-user.target.wants"
for f in "$units"/*; do
    [ -f "$f" ] || continue
    name=${f##*/}
    cp "$f" "$out/$name"
    case "$name" in
        *@.*|*.target) ;;
        *) ln -sf "../$name" "$out/multi-user.target.wants/$name" ;;
    esac
done
exit 0
EOF

# ---------------------------------------------------------------------------
# mmdebstrap customize hook: runs on the host with the new root as $1.
customize() {
    local root=$1
    [ -d "$root/etc" ] || die "customize: $root is no root file system"

    # Nix: flakes on, nothing fetched from outside, builders may use the
    # target's coreutils through absolute paths (trixie's default sandbox
    # only has a static sh), and the deploy user may import unsigned paths.
    mkdir -p "$root/etc/nix"
    cat >>"$root/etc/nix/nix.conf" <<'EOF'
experimental-features = nix-command flakes
substituters =
sandbox = false
trusted-users = root deploy
EOF

    # Units that fail or wait without internet would make the system degraded,
    # and so would the mounts that systemd 262 (sid) tries and nspawn refuses:
    # hugetlbfs and fusectl.
    local unit
    for unit in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
        e2scrub_reap.service fstrim.timer man-db.timer dpkg-db-backup.timer \
        systemd-networkd-wait-online.service dev-hugepages.mount \
        sys-fs-fuse-connections.mount; do
        ln -sfn /dev/null "$root/etc/systemd/system/$unit"
    done

    # No per-user service managers: every ssh login would start user@0 and
    # its end stop it again; under load a login racing that start/stop once
    # left the target transiently `degraded`. Deployers need system units
    # only (systemd-run), so targets run none.
    ln -sfn /dev/null "$root/etc/systemd/system/user@.service"

    # Fresh identity per target: lab.sh writes machine-id, hostname and an
    # ed25519 host key into each target's own layer.
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    rm -f "$root"/etc/ssh/ssh_host_*
    mkdir -p "$root/etc/ssh/sshd_config.d"
    cat >"$root/etc/ssh/sshd_config.d/lab.conf" <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF

    # Users: `deploy` may sudo without a password, `pwuser` must type one
    # (tests need a host where sudo would prompt).
    chroot "$root" useradd --create-home --shell /bin/bash deploy
    chroot "$root" useradd --create-home --shell /bin/bash pwuser
    printf '%s\n' 'pwuser:lab-password-not-secret' | chroot "$root" chpasswd
    printf '%s\n' 'deploy ALL=(ALL:ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/deploy"
    printf '%s\n' 'pwuser ALL=(ALL:ALL) ALL' >"$root/etc/sudoers.d/pwuser"
    chmod 0440 "$root/etc/sudoers.d/deploy" "$root/etc/sudoers.d/pwuser"

    # The NixOS stand-in at boot (see GENERATOR above). switch-to-configuration
    # runs only where /etc/NIXOS says this is NixOS.
    : >"$root/etc/NIXOS"
    mkdir -p "$root/etc/systemd/system-generators" "$root/boot"
    printf '%s\n' "$GENERATOR" >"$root/etc/systemd/system-generators/nixos-standin"
    chmod 0755 "$root/etc/systemd/system-generators/nixos-standin"
    mkdir -p "$root/nix/var/nix/profiles" "$root/nix/var/nix/gcroots"

    # Keep the image small: documentation and package lists are not needed.
    rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/var/lib/apt/lists/*
    printf 'deploy-flake lab rootfs, recipe %s\n' "$(recipe_hash)" >"$root/etc/deploy-flake-lab"
}

recipe_hash() {
    sha256sum "$self" | cut -c1-16
}

build() {
    local suite=$1
    case "$suite" in
        bookworm | trixie | sid) ;;
        *) die "unknown suite '$suite' (use bookworm, trixie or sid)" ;;
    esac
    [ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, chroot)"
    command -v mmdebstrap >/dev/null ||
        die "mmdebstrap missing: apt-get install -y --no-install-recommends mmdebstrap"

    local cache=${DEPLOY_FLAKE_LAB_CACHE:-/var/cache/deploy-flake-lab}
    local final
    final="$cache/$suite-$(recipe_hash)"
    mkdir -p "$cache"

    if [ -f "$final/etc/deploy-flake-lab" ]; then
        printf '%s\n' "$final"
        return 0
    fi

    exec 9>"$cache/.$suite.lock"
    flock 9
    if [ -f "$final/etc/deploy-flake-lab" ]; then
        printf '%s\n' "$final"
        return 0
    fi

    local tmp
    tmp=$(mktemp -d "$cache/.build-$suite.XXXXXX")
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    local start=$SECONDS
    # sid's mirror is a snapshot whose Release file may be past its
    # Valid-Until date. openssh-client is listed on its own: sid's
    # openssh-server no longer pulls it in, and the deployer role runs ssh.
    mmdebstrap --variant=apt --quiet \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --include=systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,openssh-client,nix-setup-systemd,iproute2,procps,sudo,iputils-ping \
        --customize-hook="bash '$self' --customize \"\$1\"" \
        "$suite" "$tmp/root" >&2
    mv -T "$tmp/root" "$final"
    rm -rf "$tmp"
    trap - EXIT
    printf 'rootfs.sh: built %s in %ss\n' "$final" "$((SECONDS - start))" >&2
    printf '%s\n' "$final"
}

case "${1:-}" in
    --customize)
        [ $# = 2 ] || die "usage: rootfs.sh --customize ROOT"
        customize "$2"
        ;;
    bookworm | trixie | sid)
        [ $# = 1 ] || die "usage: rootfs.sh SUITE"
        build "$1"
        ;;
    *)
        die "usage: rootfs.sh SUITE   (SUITE = bookworm | trixie | sid)"
        ;;
esac
