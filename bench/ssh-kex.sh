#!/usr/bin/env bash
# Benchmark: what one ssh login costs the deployer's CPU, by OpenSSH client
# and key exchange. Most of deploy-flake's CPU per host is its two logins
# (the master and the fresh confirmation login), so this bounds it.
#
# Boots one trixie lab target and logs in LOGINS times (`true`, no
# ControlMaster) with each contender, interleaved so that a busy spell
# falls on all alike; prints the median client CPU per login (user+sys of
# the ssh process). The contenders: this machine's ssh, and the newer
# OpenSSH of the trixie lab root file system (run through that tree's own
# loader and libraries), each with its default exchange and with the
# exchanges it has of sntrup761x25519, mlkem768x25519 and curve25519.
#
#   bash bench/ssh-kex.sh [LOGINS]       (default 15; as root, after tests/prepare.sh)
#   KEEP_SSH=DIR bash bench/ssh-kex.sh   also writes DIR/ssh, a wrapper that
#       runs the lab's newer ssh: `PATH=DIR:$PATH bash bench/fleet.sh 100`
#       then measures a fleet deploy with it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=$(mktemp -d /tmp/deploy-flake-ssh-kex.XXXXXX)
export BENCH_PREFIX=kex
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
LOGINS=${1:-15}

rootfs=$(bash "$ROOT/tests/lab/rootfs.sh" trixie)
loader=$rootfs/usr/lib64/ld-linux-x86-64.so.2
if [ ! -x "$loader" ] || [ ! -x "$rootfs/usr/bin/ssh" ]; then die "no ssh client in $rootfs"; fi
newer="$loader --library-path $rootfs/usr/lib/x86_64-linux-gnu $rootfs/usr/bin/ssh"
if [ -n "${KEEP_SSH:-}" ]; then
    mkdir -p "$KEEP_SSH"
    printf '#!/bin/sh\nexec %s "$@"\n' "$newer" >"$KEEP_SSH/ssh"
    chmod +x "$KEEP_SSH/ssh"
    log "wrote $KEEP_SSH/ssh ($("$KEEP_SSH/ssh" -V 2>&1))"
fi

bench_init
claim_indexes 1
boot_targets

python3 - "$LOGINS" "10.77.${IDXS[0]}.2" "$WORK" "$newer" <<'PY'
import resource, statistics, subprocess, sys

logins, addr, work, newer = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4].split()
opts = ["-F", "/dev/null", "-i", f"{work}/id_ed25519", "-o", f"UserKnownHostsFile={work}/known_hosts",
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ControlPath=none",
        "-o", "LogLevel=ERROR"]

def version(ssh):
    return subprocess.run(ssh + ["-V"], capture_output=True, text=True).stderr.split(",")[0].strip()

def default_kex(ssh):
    err = subprocess.run(ssh + opts + ["-v", f"root@{addr}", "true"], capture_output=True, text=True).stderr
    return next((l.split()[-1] for l in err.splitlines() if "kex: algorithm:" in l), "?")

contenders = []
for ssh in (["ssh"], newer):
    have = set(subprocess.run(ssh + ["-Q", "kex"], capture_output=True, text=True).stdout.split())
    name = version(ssh)
    contenders.append((f"{name}, default ({default_kex(ssh)})", ssh, None))
    for kex in ("sntrup761x25519-sha512@openssh.com", "mlkem768x25519-sha256", "curve25519-sha256"):
        if kex in have:
            contenders.append((f"{name}, {kex}", ssh, kex))

def cpu_ms(argv):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * 1000

times = {c[0]: [] for c in contenders}
for _ in range(logins):
    for name, ssh, kex in contenders:
        argv = ssh + opts + (["-o", f"KexAlgorithms={kex}"] if kex else []) + [f"root@{addr}", "true"]
        times[name].append(cpu_ms(argv))
width = max(len(n) for n in times)
print(f"client CPU per login, ms ({logins} logins each)")
print(f"{'client, key exchange':{width}}  {'median':>7} {'min':>7}")
for name, t in times.items():
    print(f"{name:{width}}  {statistics.median(t):7.1f} {min(t):7.1f}")
PY
