#!/usr/bin/env bash
# Installs what the lab tests (git: a flake served over git+http), the manual
# page test (man-db), the agent tier (shellcheck, dash) and the demo
# need on a Debian 12 machine (as root) and builds the cached lab root file
# systems. Idempotent: a prepared
# machine is left as it is in a few seconds.
#
#   tests/prepare.sh            packages + the three root file systems (bookworm, trixie, sid)
#
# Timings go to stderr as "prepare: <step> <seconds>s".
set -euo pipefail
here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")

[ "$(id -u)" = 0 ] || { echo "prepare.sh: run as root (the lab needs overlay mounts, netns and nspawn)" >&2; exit 1; }

packages=(nix-bin openssh-client mmdebstrap systemd-container iproute2 util-linux procps ca-certificates busybox-static python3 nftables man-db git shellcheck dash)
step() { printf 'prepare: %s %ss\n' "$1" "$(( $(date +%s) - $2 ))" >&2; }

t=$(date +%s)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Never qemu-system-*: it would remove the machine's qemu-utils.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
step packages "$t"

for suite in trixie bookworm sid; do
    t=$(date +%s)
    bash "$here/lab/rootfs.sh" "$suite" >/dev/null
    step "rootfs-$suite" "$t"
done
