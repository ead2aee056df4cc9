#!/usr/bin/env python3
"""Time from "sshd stopped" to "host reachable again" for a configuration
that stops sshd (the stops-sshd lab scenario).

Boots one lab target, deploys healthy-v1, then deploys stops-sshd with
`--json` and timestamps the agent's line "activation stops sshd"; from then
on a fresh `ssh true` is tried every 100 ms until one succeeds. Two cases:
  alive   the deployer stays: it sees the fresh login fail and tells the
          agent to roll back at once;
  killed  the deployer is SIGKILLed when sshd stops: the agent rolls back by
          itself when the confirm timeout (CONFIRM, default 10 s) runs out.

    python3 bench/lockout.py          (as root, after tests/prepare.sh)
"""
import json, os, shutil, signal, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAB = os.path.join(ROOT, "tests/lab/lab.sh")
CONFIRM = int(os.environ.get("CONFIRM", "10"))
IDX = int(os.environ.get("IDX", "230"))
os.environ["NIX_CONFIG"] = "substituters =\nbuild-users-group =\nsandbox = false"

subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=ROOT, check=True)
BIN = os.path.join(ROOT, "target/release/deploy-flake")
work = tempfile.mkdtemp(prefix="deploy-flake-lockout.")
name = f"lockout-{IDX}"
addr = f"10.77.{IDX}.2"
ssh = ["ssh", "-i", f"{work}/id_ed25519", "-o", f"UserKnownHostsFile={work}/known_hosts",
       "-o", "BatchMode=yes", "-o", "ConnectTimeout=1", "-o", "ControlPath=none", f"root@{addr}", "true"]


def write_flake(config):
    flake = os.path.join(work, "flake")
    if not os.path.exists(flake):
        shutil.copytree(os.path.join(ROOT, "tests/fixtures/lab"), flake)
        shutil.copytree(os.path.join(ROOT, "lib"), os.path.join(flake, "lib"))
    with open(os.path.join(flake, "hosts.nix"), "w") as f:
        f.write(f'{{ h = {{ hostname = "{addr}"; configuration = "{config}"; timeouts.confirm = {CONFIRM}; '
                f'sshOpts = [ "-i" "{work}/id_ed25519" "-o" "UserKnownHostsFile={work}/known_hosts" ]; }}; }}\n')
    return flake


def case(kill):
    flake = write_flake("healthy-v1")
    subprocess.run([BIN, "--all", "--flake", flake], check=True, stdout=subprocess.DEVNULL)
    write_flake("stops-sshd")
    p = subprocess.Popen([BIN, "--json", "--all", "--flake", flake], stdout=subprocess.PIPE, text=True)
    t0 = None
    for line in p.stdout:
        ev = json.loads(line)
        if ev.get("event") == "output" and "activation stops sshd" in ev.get("line", ""):
            t0 = time.monotonic()
            break
    assert t0, "never saw sshd stop"
    if kill:
        p.send_signal(signal.SIGKILL)
    while subprocess.run(ssh, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
        time.sleep(0.1)
    t1 = time.monotonic()
    p.wait()
    cur = subprocess.run(ssh[:-1] + ["readlink", "/run/current-system"], capture_output=True, text=True).stdout.strip()
    return t1 - t0, p.returncode, cur


try:
    subprocess.run([LAB, "keygen", work], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([LAB, "boot", name, str(IDX), "trixie", work], check=True, stderr=subprocess.DEVNULL)
    for kill in (False, True):
        took, rc, cur = case(kill)
        label = "killed" if kill else "alive"
        print(f"deployer {label:6}: sshd stopped -> host reachable again in {took:5.2f} s "
              f"(confirm timeout {CONFIRM} s; deployer exit {rc}; running {os.path.basename(cur)})")
finally:
    subprocess.run([LAB, "stop", name, work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(work, ignore_errors=True)
