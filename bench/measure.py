#!/usr/bin/env python3
"""Measures one deploy-flake run for the lab benchmarks (bench/fleet.sh,
bench/deploy.sh) and prints their tables.

    measure.py run --out RESULT.json --events EVENTS.jsonl -- CMD...
        Runs CMD (the tool, with --json) in cgroups of its own and writes
        what it used to RESULT.json:
        - wall time, to the exit (a pidfd wakes the sampling loop the moment
          CMD exits: not rounded up to its next 100 ms sample);
        - CPU time (user, system) of every process of CMD's tree, read from
          its cgroup v2 cpu.stat once the cgroup is empty. A cgroup, not
          getrusage: the ssh masters daemonize (ControlPersist) and are
          never waited for by the tool, so RUSAGE_CHILDREN misses them,
          but they stay in the cgroup they were forked in. The tool closes
          its masters when it ends; a process still there 40 s later is
          counted as "lingering" and killed (by pid, in this cgroup only);
        - that CPU time split three ways: the tool's own (utime+stime of its
          process, polled every 100 ms: up to 100 ms short), the children
          it waited for (nix, the fresh-login ssh clients: getrusage of the
          tool less its own) and the rest (the daemonized ssh masters: the
          cgroup's total less getrusage);
        - the tool's own peak RSS: VmHWM from /proc/PID/status, polled every
          100 ms (monotonic, so the last poll before exit is its peak up to
          the last 100 ms);
        - the peak of the whole tree's memory, sampled every 100 ms: the
          sum of RSS and the sum of PSS (PSS shares each shared page among
          its users, so 100 ssh processes do not count libcrypto 100 times)
          over the processes in the cgroup, and their number;
        - memory.max_usage_in_bytes of a cgroup v1 memory cgroup: exact,
          but it also counts page cache the tree brought in;
        - the whole machine's busy CPU time over the run (/proc/stat) and
          the load average before it: what else ran besides the tool and
          the targets shows as host_busy_s - tree CPU - targets' CPU;
        - the tool's --json lines, each with "t_ms" (when it was read, in ms
          since the start) added, go to EVENTS.jsonl; its stderr next to it;
        - from the tool's --json events: the run-finished outcomes and exit
          code, each phase-finished duration by phase, notes and rollbacks.
    measure.py merge RESULT.json KEY=VALUE...
        RESULT.json with more fields, as one line (for a results file).
    measure.py fleet RESULTS.jsonl      the table of bench/fleet.sh
    measure.py curve RESULTS.jsonl      CPU per host by fleet size
    measure.py phases RESULTS.jsonl [--per-run]
                                        median phase durations
    measure.py failures EVENTS.jsonl    each host that did not deploy: its
                                        report and its last output lines
"""
import json, os, re, select, signal, statistics, subprocess, sys, threading, time
from collections import Counter, defaultdict

V2 = "/sys/fs/cgroup/unified/deploy-flake-bench"
V1_MEM = "/sys/fs/cgroup/memory/deploy-flake-bench"
PAGE = os.sysconf("SC_PAGE_SIZE")


def read(path, default=""):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def procs(cg):
    """The processes of cg and of the cgroups below it (a deploying
    container, `lab.sh deployer`, runs in cgroups of its own below ours)."""
    found = []
    for d, _, _ in os.walk(cg):
        found += [int(p) for p in read(os.path.join(d, "cgroup.procs")).split()]
    return found


def status_kb(pid, field):
    for line in read(f"/proc/{pid}/status").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def tree_memory(pids):
    """(RSS bytes, PSS bytes) summed over pids."""
    rss = pss = 0
    for p in pids:
        statm = read(f"/proc/{p}/statm").split()
        if len(statm) > 1:
            rss += int(statm[1]) * PAGE
        for line in read(f"/proc/{p}/smaps_rollup").splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
                break
    return rss, pss


def host_busy_s():
    """CPU seconds the whole machine spent busy so far (all but idle and iowait)."""
    f = [int(x) for x in read("/proc/stat").splitlines()[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_s(pid):
    """utime + stime of pid itself (not its children), in seconds."""
    stat = read(f"/proc/{pid}/stat")
    if not stat:
        return 0.0
    f = stat[stat.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def cpu_stat(cg):
    return {k: int(v) for k, v in (l.split() for l in read(os.path.join(cg, "cpu.stat")).splitlines())}


def summarize_events(path):
    outcomes, phases, notes, rollbacks = Counter(), defaultdict(list), Counter(), []
    failures, exit_code, run_ms = [], None, None
    with open(path) as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            kind = ev.get("event")
            if kind == "phase-finished":
                phases[ev["phase"]].append(ev["duration"])
            elif kind == "note":
                notes[re.sub(r"/nix/store/\S+", "<store path>", ev["text"])] += 1
            elif kind == "rolled-back":
                rollbacks.append({"host": ev["host"], "reason": ev["reason"], "cause": ev.get("cause")})
            elif kind == "run-finished":
                exit_code, run_ms = ev["exit_code"], ev["duration"]
                for r in ev["reports"]:
                    outcomes[r["outcome"]] += 1
                    if r["outcome"] not in ("deployed", "up-to-date"):
                        failures.append({k: r.get(k) for k in ("host", "outcome", "phase", "reason", "message")})
    return {"outcomes": dict(outcomes), "phases": dict(phases), "notes": dict(notes),
            "rollbacks": rollbacks, "failures": failures, "exit_code": exit_code, "run_ms": run_ms}


def run(argv):
    out = events = None
    while argv and argv[0] != "--":
        opt, val, argv = argv[0], argv[1], argv[2:]
        if opt == "--out":
            out = val
        elif opt == "--events":
            events = val
        else:
            sys.exit(f"measure.py: unknown option {opt}")
    cmd = argv[1:]
    assert out and events and cmd, "measure.py run --out F --events F -- CMD..."
    sweep_stale()
    name = f"run-{os.getpid()}"
    cg, mem = os.path.join(V2, name), os.path.join(V1_MEM, name)
    os.makedirs(cg)
    os.makedirs(mem)

    def enter():
        for d in (cg, mem):
            with open(os.path.join(d, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def on_signal(sig, _frame):
        raise Stopped(sig)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    p = None
    try:
        with open(events, "w") as ev_out, open(events + ".stderr", "w") as ev_err:
            load1 = float(read("/proc/loadavg").split()[0])
            busy0 = host_busy_s()
            t0 = time.monotonic()
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=ev_err, preexec_fn=enter)
            stamper = threading.Thread(target=stamp, args=(p.stdout, ev_out, t0), daemon=True)
            stamper.start()
            exited = select.poll()
            exited.register(os.pidfd_open(p.pid), select.POLLIN)
            hwm = rss_peak = pss_peak = nprocs_peak = 0
            rusage = None
            own = 0.0
            while rusage is None:
                h = status_kb(p.pid, "VmHWM")
                if h:
                    hwm = max(hwm, h)
                own = max(own, own_cpu_s(p.pid))
                pids = procs(cg)
                nprocs_peak = max(nprocs_peak, len(pids))
                rss, pss = tree_memory(pids)
                rss_peak, pss_peak = max(rss_peak, rss), max(pss_peak, pss)
                exited.poll(100)
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    rusage, code = ru, os.waitstatus_to_exitcode(status)
                    wall = time.monotonic() - t0
                    busy = host_busy_s() - busy0
            stamper.join(timeout=10)
        # The masters exit when the tool closes them; wait for the rest.
        t1 = time.monotonic()
        lingering = procs(cg)
        while procs(cg) and time.monotonic() - t1 < 40:
            time.sleep(0.1)
        linger_s = time.monotonic() - t1
        left_cmds = kill_all(cg)
        st = cpu_stat(cg)
        res = {
            "wall": round(wall, 3), "exit": code, "load1_before": load1, "host_busy_s": round(busy, 2),
            "cpu_s": st["usage_usec"] / 1e6, "user_s": st["user_usec"] / 1e6, "sys_s": st["system_usec"] / 1e6,
            "rusage_cpu_s": round(rusage.ru_utime + rusage.ru_stime, 3), "tool_own_cpu_s": round(own, 3),
            "tool_hwm_kb": hwm, "rusage_maxrss_kb": rusage.ru_maxrss,
            "tree_rss_peak_kb": rss_peak // 1024, "tree_pss_peak_kb": pss_peak // 1024,
            "procs_peak": nprocs_peak,
            "cg_mem_peak_kb": int(read(os.path.join(mem, "memory.max_usage_in_bytes"), "0")) // 1024,
            "after_exit_procs": len(lingering), "after_exit_s": round(linger_s, 2),
            "killed_lingering": left_cmds,
        }
        res.update(summarize_events(events))
        with open(out, "w") as f:
            json.dump(res, f)
    except Stopped as e:
        # Interrupted: the tool gets the signal too (it rolls back or
        # cancels as it does on Ctrl-C) and some time to act on it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if p is not None and p.poll() is None:
            p.send_signal(e.sig)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        kill_all(cg)
        sys.exit(128 + e.sig)
    finally:
        remove_cgroups(cg, mem)


def stamp(src, dst, t0):
    """Copies the tool's --json lines, each with "t_ms": when it was read,
    in ms since the start (the events carry no time of their own)."""
    for raw in iter(src.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith("{"):
            line = '{"t_ms":%d,%s' % ((time.monotonic() - t0) * 1000, line[1:])
        dst.write(line + "\n")
    dst.flush()


class Stopped(Exception):
    def __init__(self, sig):
        super().__init__(sig)
        self.sig = sig


def kill_all(cg):
    """SIGKILL what is left in our cgroup (by pid); returns their command lines."""
    left = procs(cg)
    cmds = [read(f"/proc/{q}/cmdline").replace("\0", " ").strip() for q in left]
    for q in left:
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while procs(cg) and time.monotonic() < deadline:
        time.sleep(0.05)
    return cmds


def remove_cgroups(*dirs):
    for d in dirs:
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
    for d in (V2, V1_MEM):
        try:
            os.rmdir(d)  # only when no other benchmark uses it
        except OSError:
            pass


def sweep_stale():
    """Removes the empty cgroups of runs of this script that died."""
    for top in (V2, V1_MEM):
        try:
            names = os.listdir(top)
        except FileNotFoundError:
            continue
        for n in names:
            if n.startswith("run-") and not os.path.exists(f"/proc/{n[4:]}"):
                try:
                    os.rmdir(os.path.join(top, n))
                except OSError:
                    pass


def merge(argv):
    with open(argv[0]) as f:
        res = json.load(f)
    for kv in argv[1:]:
        k, v = kv.split("=", 1)
        try:
            res[k] = json.loads(v)
        except ValueError:
            res[k] = v
    print(json.dumps(res))


def load(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def busy(r):
    """How busy the machine's cores were during the run, in percent: near
    100, the run was bound by CPU (the tool's, the targets' and others')."""
    return 100 * r["host_busy_s"] / (r["wall"] * os.cpu_count())


def other_cpu(r):
    """CPU seconds the rest of the machine used during the run."""
    return max(0.0, r["host_busy_s"] - r["cpu_s"] - r["target_cpu_s"])


def split(r):
    """Deployer CPU per host in ms: the tool itself / the children it
    waited for / the rest of its tree (the ssh masters). Not for a tool
    run on another deploying machine (a container): not our child."""
    if r.get("deployer", "here") != "here":
        return "-"
    n, own = r["hosts"], r.get("tool_own_cpu_s", 0)
    kids = r["rusage_cpu_s"] - own
    rest = max(0.0, r["cpu_s"] - r["rusage_cpu_s"])
    return f"{own / n * 1000:.0f}/{kids / n * 1000:.0f}/{rest / n * 1000:.0f}"


def tool_hwm(r):
    """The tool's own peak RSS, when the tool is measure.py's child."""
    return f"{r['tool_hwm_kb'] / 1024:.1f}" if r.get("deployer", "here") == "here" else "-"


def outcomes(r):
    o = r["outcomes"]
    short = {"deployed": "dep", "up-to-date": "utd", "rolled-back": "rb", "failed": "fail"}
    return " ".join(f"{short.get(k, k)}={v}" for k, v in sorted(o.items())) or "-"


def fleet(argv):
    cores = os.cpu_count()
    rows = load(argv[0])
    hdr = ("mode", "hosts", "par", "wall_s", "floor_s", "x_floor", "busy%", "other_s", "dfl_cpu/h_ms", "own/kid/mst",
           "tgt_cpu/h_ms", "logins/h", "tool_hwm_MB", "tree_pss_MB", "tree_rss_MB", "cg_mem_MB", "procs", "outcomes")
    fmt = "%-7s %5s %4s %8s %8s %7s %5s %7s %12s %12s %12s %8s %11s %11s %11s %9s %5s  %s"
    deployers = {r.get("deployer", "here") for r in rows}
    if deployers != {"here"}:
        print("deploying from: " + ", ".join(sorted(deployers)))
    print(fmt % hdr)
    for r in rows:
        n, floor = r["hosts"], r["target_cpu_s"] / cores
        x_floor = f"{r['wall'] / floor:.2f}" if floor > 0 else "-"
        print(fmt % (r["mode"], n, r["par"], f"{r['wall']:.2f}", f"{floor:.2f}", x_floor,
                     f"{busy(r):.0f}", f"{other_cpu(r):.1f}",
                     f"{r['cpu_s'] / n * 1000:.0f}", split(r), f"{r['target_cpu_s'] / n * 1000:.0f}",
                     f"{r['logins'] / n:.2f}", tool_hwm(r),
                     f"{r['tree_pss_peak_kb'] / 1024:.0f}", f"{r['tree_rss_peak_kb'] / 1024:.0f}",
                     f"{r['cg_mem_peak_kb'] / 1024:.0f}", r["procs_peak"], outcomes(r)))
        for f_ in r["failures"][:5]:
            print(f"    {f_['host']}: {f_['outcome']} in {f_['phase']} ({f_['reason']}): {f_['message']}")
        for text, count in r["notes"].items():
            print(f"    note x{count}: {text}")
        if r["killed_lingering"]:
            print(f"    still running 40 s after exit (killed): {r['killed_lingering']}")
    print(f"floor_s = the targets' CPU time / {cores} cores; x_floor = wall_s / floor_s; own/kid/mst = deployer CPU per host of "
          "the tool itself / the children it waited for (nix, fresh-login ssh) / the rest (ssh "
          "masters); other_s = CPU seconds that other work on "
          "this machine took during the run; dfl = deploy-flake's process tree; tgt = the targets' "
          "cgroups; per host (h); busy% = how busy the machine's cores were during the run")


def curve(argv):
    rows = load(argv[0])
    print("%-7s %5s %4s %8s %8s %12s %12s %12s %8s %12s" % (
        "mode", "hosts", "par", "wall_s", "other_s", "dfl_cpu/h_ms", "own/kid/mst", "tgt_cpu/h_ms",
        "logins/h", "tool_hwm_MB"))
    for r in rows:
        n = r["hosts"]
        print("%-7s %5s %4s %8.2f %8.1f %12.0f %12s %12.0f %8.2f %12.1f" % (
            r["mode"], n, r["par"], r["wall"], other_cpu(r), r["cpu_s"] / n * 1000, split(r),
            r["target_cpu_s"] / n * 1000, r["logins"] / n, r["tool_hwm_kb"] / 1024))


def failures(argv):
    """The failed hosts of one run (as summarize_events finds them), each
    with its last output lines: the why is often only there."""
    output = defaultdict(list)
    with open(argv[0]) as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "output":
                output[ev.get("host")].append(ev["line"])
    for f_ in summarize_events(argv[0])["failures"]:
        print(f"{f_['host']}: {f_['outcome']} in {f_['phase']} ({f_['reason']}): {f_['message']}")
        for line in output[f_["host"]][-12:]:
            print(f"  | {line}")


def phases(argv):
    """Median phase durations: by fleet size over the change deploys of
    deploy-flake, or (--per-run) for each run, with the slowest host."""
    rows = load(argv[0])
    per_run = "--per-run" in argv
    order = ["connect", "lock", "preflight", "copy", "build", "self-check", "activate", "confirm", "boot"]
    groups = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if per_run:
            key = f"{r['mode']} n={r['hosts']} p={r['par']}"
        elif r.get("mode") == "change" and r.get("who", "tool") == "tool":
            key = f"{r['hosts']}"
        else:
            continue
        for ph, ds in r["phases"].items():
            groups[key][ph].extend(ds)
    # Phases of some runs only (reboot, with --reboot) follow the others.
    seen = {ph for g in groups.values() for ph in g}
    order += [ph for ph in ("reboot",) if ph in seen] + sorted(seen - set(order) - {"reboot"})
    if per_run:
        print("ms per phase: median across hosts / slowest host")
        width = max(len(k) for k in groups) if groups else 5
        print("%-*s " % (width, "run") + " ".join("%11s" % p for p in order))
        for key, ph in groups.items():
            print("%-*s " % (width, key) + " ".join(
                "%11s" % (f"{statistics.median(ph[p]):.0f}/{max(ph[p])}" if ph[p] else "-") for p in order))
    else:
        print("median ms per phase across hosts and reps (change deploys)")
        print("%-6s " % "hosts" + " ".join("%10s" % p for p in order))
        for key, ph in groups.items():
            print("%-6s " % key + " ".join(
                "%10s" % (f"{statistics.median(ph[p]):.0f}" if ph[p] else "-") for p in order))


if __name__ == "__main__":
    cmds = {"run": run, "merge": merge, "fleet": fleet, "curve": curve, "phases": phases,
            "failures": failures}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](sys.argv[2:])
