//! What an attacker of "never half-deployed" would try, on real targets:
//! each test guards one way the promise could break (an abort racing a
//! rollback, a boot entry for an unconfirmed system, an agent that started
//! although starting it failed, a lock kept by a lost deployer, ...).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Lab, Suite, Target};
use crate::helpers::*;

fn assert_on(t: &Target, sys: &str) {
    assert_eq!(t.current_system().as_deref(), Some(sys), "{}: runs", t.name);
    assert_eq!(t.boot_profile().as_deref(), Some(sys), "{}: boots", t.name);
}

/// The deployer's abort (after its own activate timeout) lands while the
/// agent is already rolling back to a slow previous system: the rollback
/// is not killed, and ends on the previous system.
#[test]
fn an_abort_during_the_rollback_does_not_stop_it() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let prev = baseline(&lab, "h", t, "slow-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "hanging-activation", "")]);
    // The agent gives up at 3 s and rolls back (20 s); the deployer's abort
    // comes at 3 + 15 s, in the middle of that.
    let run = deploy(&f, &["--all", "--timeout", "activate=3"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(
        (run.outcome("h").as_str(), run.reason("h").as_str()),
        ("rolled-back", "timeout"),
        "{run}"
    );
    assert!(run.lines("h").iter().any(|l| l.contains("slow-v1 activation: done")), "{run}");
    assert!(
        run.elapsed > Duration::from_secs(18),
        "the abort came during the rollback: {:?}",
        run.elapsed
    );
    assert_on(t, &prev);
    assert_eq!(t.system_state(), "running");
}

/// A system running after a manual `switch-to-configuration test` was never
/// confirmed: a re-run activates and confirms it before its boot entry.
#[test]
fn a_system_running_unconfirmed_gets_no_boot_entry_without_confirmation() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let source = t.archive(&f, &lab.nix_sshopts());
    let v2 = t.build(&source, "healthy-v2");
    assert!(t.switch(&v2, "test").status.success());
    assert_eq!(t.boot_profile(), Some(v1));
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    // In the order the target did it: activated, confirmed, and only then
    // the boot entry (`switch-to-configuration boot` says it wrote one).
    let lines = run.lines("h");
    let at = |what: &str, hit: &dyn Fn(&str) -> bool| {
        lines.iter().position(|l| hit(l)).unwrap_or_else(|| panic!("{what}: {run}"))
    };
    let activated = at("activated again", &|l| l.contains("activating"));
    let confirmed = at("confirmed", &|l| l == "deploy-flake: confirmed");
    let entry = at("a boot entry written", &|l| l.starts_with("boot entries: "));
    assert!(activated < confirmed && confirmed < entry, "{lines:#?}");
    assert_on(t, &v2);
}

/// The activation was started, but starting it reported an error (here a
/// `systemd-run` that hangs after starting the unit): the deployer asks,
/// finds it running and follows it to the end.
#[test]
fn an_agent_that_started_although_starting_it_failed_is_followed() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    t.ssh_ok(
        "printf '#!/bin/sh\\n/usr/bin/systemd-run \"$@\"\\nsleep 3600\\n' >/usr/local/bin/systemd-run \
         && chmod +x /usr/local/bin/systemd-run",
    );
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all", "--timeout", "activate=8"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.outcome("h"), "deployed");
    let notes = run.notes("h");
    assert!(
        notes.iter().any(|n| n.contains("the agent started although starting it said")),
        "{notes:?}"
    );
    assert_on(t, &run.system("h"));
}

/// magicRollback off and a failed activation: the host runs the new system,
/// unconfirmed, and boots the old one; the report says exactly that.
#[test]
fn a_failure_without_magic_rollback_reports_the_unconfirmed_system_it_runs() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "failing-unit", "magicRollback = false;")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(
        (run.outcome("h").as_str(), run.reason("h").as_str()),
        ("unconfirmed", "activation-failed")
    );
    let runs = run.system("h");
    assert!(runs.contains("failing-unit"), "{runs}");
    assert_eq!(run.report("h")["boot"], v1.as_str());
    assert_eq!(t.current_system(), Some(runs));
    assert_eq!(t.boot_profile(), Some(v1));
}

/// A deployer lost in a network partition (its packets dropped, then
/// killed: the target never sees its connection end) keeps the host lock
/// only until it misses its heartbeats.
#[test]
fn the_lock_of_a_deployer_lost_in_a_partition_is_released() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let slow = flake(&lab, &[host_entry(&lab, "h", t, "slow-build", "")]);
    let mut a = Background::start(&slow, &["--all"]);
    a.wait_for("A builds, holding the lock", Duration::from_secs(120), phase_started("h", "build"));
    let (port, master) = master_to(&t.address);
    blackhole(t, port);
    let cut = Instant::now();
    a.signal("KILL");
    let _ = Command::new("kill").args(["-KILL", &master.to_string()]).status();
    let _ = a.finish(Duration::from_secs(10));
    // The lock as the target sees it, asked over a login of our own: held
    // while heartbeats could still be due (the last one reached the host
    // at most 5 s before the cut; the holder waits 30 s for the next),
    // then free.
    let lock = || t.ssh_ok("flock -n /run/deploy-flake/lock true && echo free || echo held");
    eventually("the lock released", Duration::from_secs(75), || lock() == "free");
    let held = cut.elapsed();
    eprintln!("lock released {held:?} after the deployer was cut off");
    assert!(
        held >= Duration::from_secs(20),
        "released before the heartbeats were missed: {held:?}"
    );
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    assert_on(t, &run.system("h"));
}

/// After a lost connection the deployer re-attaches with the host lock
/// taken again: no second deploy can slip in meanwhile. The lock's holder
/// before the loss let it go (it is gone) and a new one holds it, for the
/// same run; the host ends on the run's system.
#[test]
fn a_reconnected_deployer_holds_the_lock_again() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "")]);
    let mut a = Background::start(&f, &["--all"]);
    a.wait_for("activation started", Duration::from_secs(120), |v| {
        v["event"] == "output"
            && v["line"].as_str().unwrap_or("").contains("slow activation: started")
    });
    // The `flock` that holds the host lock (the agent's `hold` runs under it).
    let holder = || t.ssh_ok("pgrep -f '^flock -n -o -E 75 /run/deploy-flake/loc[k] ' || true");
    let before = holder();
    assert!(!before.is_empty() && !before.contains('\n'), "one holder before: {before:?}");
    let (_, master) = master_to(&t.address);
    assert!(Command::new("kill").args(["-KILL", &master.to_string()]).status().unwrap().success());
    a.wait_for("reconnected", Duration::from_secs(30), |v| {
        v["event"] == "note" && v["text"].as_str().unwrap_or("").starts_with("reconnected")
    });
    let run_id = a.seen.iter().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        v["run_id"].as_str().map(String::from)
    });
    let info = t.ssh_ok("cat /run/deploy-flake/lock.info");
    assert!(info.contains(&format!("run {} ", run_id.unwrap())), "held by this run again: {info}");
    assert_eq!(t.ssh_ok("flock -n /run/deploy-flake/lock true && echo free || echo held"), "held");
    let after = holder();
    assert!(!after.is_empty() && !after.contains('\n'), "one holder after: {after:?}");
    assert_ne!(
        after, before,
        "taken again, not kept: the holder from before the loss still holds it"
    );
    let run = a.finish(Duration::from_secs(120));
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.outcome("h"), "deployed", "{run}");
    let sys = run.system("h");
    assert_eq!(configuration_of(&sys), Some("slow-activation"), "{sys}");
    assert_on(t, &sys);
}

/// An IPv6 literal host name connects (ssh takes it bare).
#[test]
fn an_ipv6_host_deploys() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let entry = format!(
        "  h = {{ hostname = \"{}\"; configuration = \"healthy-v2\"; sshOpts = {}; }};\n",
        t.address6,
        lab.ssh_opts_nix()
    );
    let run = deploy(&flake(&lab, &[entry]), &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    assert_on(t, &run.system("h"));
    let plan = deploy(
        &flake(&lab, &[]),
        &["--dry-run", &format!("nixos://root@[{}]/healthy-v1", t.address6)],
    );
    assert!(plan.stdout.contains(&format!("root@[{}]:22", t.address6)), "{plan}");
}

/// Timeouts too large to be meant are refused before any host is touched.
#[test]
fn huge_timeouts_are_refused_and_touch_nothing() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all", "--timeout", "lock=18446744073709551615"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("--timeout `lock=18446744073709551615`"), "{run}");
    let f =
        flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "timeouts.activate = 99999999999;")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("timeouts.activate"), "{run}");
    assert_eq!(
        t.ssh_ok("test -e /run/deploy-flake && echo touched || echo untouched"),
        "untouched"
    );
}

/// Is a build of a lab system still running on this machine (not in a
/// target: they share the kernel, not the pid namespace)?
fn local_slow_build_running() -> bool {
    let ours = std::fs::read_link("/proc/self/ns/pid").ok();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let dir = e.path();
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains("build-toplevel.sh")
            && std::fs::read_link(dir.join("ns/pid")).ok() == ours
    })
}

/// Ctrl-C during a (local) build stops it at once: the build's processes
/// end, the host is cancelled unchanged, and the exit code says no host is
/// in doubt; so does a second Ctrl-C before any host changed.
#[test]
fn ctrl_c_stops_builds_at_once_and_a_second_one_knows_nothing_changed() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-build", r#"buildOn = "local";"#)]);
    for signals in [1, 2] {
        // A build this machine never did (its store outlives test runs).
        let salt = format!("{}-{signals}-{:?}", std::process::id(), Instant::now());
        std::fs::write(f.join("build-salt"), salt).unwrap();
        let mut a = Background::start(&f, &["--all"]);
        a.wait_for("building", Duration::from_secs(120), phase_started("h", "build"));
        eventually("the build runs here", Duration::from_secs(30), local_slow_build_running);
        let sent = Instant::now();
        for _ in 0..signals {
            a.signal("INT");
            std::thread::sleep(Duration::from_millis(300));
        }
        let run = a.finish(Duration::from_secs(30));
        assert!(sent.elapsed() < Duration::from_secs(10), "stopped at once: {:?}", sent.elapsed());
        assert_eq!(run.code, 1, "{signals} Ctrl-C: {run}");
        if signals == 1 {
            assert_eq!(
                (run.outcome("h").as_str(), run.reason("h").as_str()),
                ("cancelled", "cancelled")
            );
        }
        eventually("the build's processes end", Duration::from_secs(10), || {
            !local_slow_build_running()
        });
        assert_on(t, &v1);
    }
}

/// A reader that stops reading the output (`deploy-flake | less`, a full
/// pipe) does not stall the deploy: the host is confirmed and deployed
/// while nobody reads, and every line is there when the reader comes back.
#[test]
fn a_reader_that_stops_reading_does_not_stall_the_deploy() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "chatty-activation", "timeouts.confirm = 10;")]);
    let mut child =
        command(&f, &["--all"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    // Not reading: the pipe fills up after the first 64 KiB.
    eventually("deployed while nobody reads", Duration::from_secs(120), || {
        t.boot_profile().is_some_and(|p| p.contains("chatty-activation"))
    });
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", tail(&out));
    let lines = out.lines().filter(|l| l.contains("chatty activation line")).count();
    assert_eq!(lines, 3000, "every line arrived");
    assert!(out.len() > 200_000, "more than a pipe holds: {} bytes", out.len());
    assert_on(t, &t.current_system().unwrap());
}

fn tail(s: &str) -> String {
    crate::common::tail(s, 20)
}

/// The agent script another run is executing is never rewritten: a second
/// run installs nothing over it (it is content-addressed and written
/// through a rename when missing).
#[test]
fn the_agent_script_is_not_rewritten_under_a_running_agent() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-build", "")]);
    let mut a = Background::start(&f, &["--all"]);
    a.wait_for("A holds the lock", Duration::from_secs(120), phase_started("h", "build"));
    let stat = || t.ssh_ok("stat -c '%i %Y %s' /run/deploy-flake/agent-*.sh");
    let before = stat();
    let b = deploy(&f, &["--all"]);
    assert_eq!(b.reason("h"), "locked", "{b}");
    assert_eq!(stat(), before, "the agent file was not rewritten");
    a.signal("INT");
    let _ = a.finish(Duration::from_secs(60));
}

/// A target that reboots mid-activation: the deployer sees at once that
/// the run's state is gone, and says what the host runs now.
#[test]
fn a_target_rebooting_mid_run_is_reported_at_once() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "")]);
    let mut a = Background::start(&f, &["--all"]);
    a.wait_for("activation started", Duration::from_secs(120), |v| {
        v["event"] == "output"
            && v["line"].as_str().unwrap_or("").contains("slow activation: started")
    });
    t.reboot();
    let back = Instant::now();
    let run = a.finish(Duration::from_secs(120));
    assert!(
        back.elapsed() < Duration::from_secs(30),
        "reported {:?} after the reboot",
        back.elapsed()
    );
    assert_eq!(run.code, 3, "{run}");
    assert_eq!(
        (run.outcome("h").as_str(), run.reason("h").as_str()),
        ("unknown", "rebooted"),
        "{run}"
    );
    assert_eq!(run.system("h"), v1, "it came back on its boot entry");
    assert_on(t, &v1);
}

/// A waiter of the run that no longer reads (stopped, or its reader
/// stuck) with its wake-up FIFO full: the agent and the deployer's
/// confirmation pass it over instead of blocking on it, and the change is
/// confirmed and written as usual.
#[test]
fn a_waiter_whose_wake_up_fifo_is_full_blocks_nobody() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let before = t.ssh_ok("ls /run/deploy-flake/runs");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "timeouts.confirm = 10;")]);
    let bg = Background::start(&f, &["--all"]);
    // Watched on the host itself: the deployer's output may come later.
    let newest = || t.ssh_ok("ls -d /run/deploy-flake/runs/* | tail -n 1");
    eventually("the activation", Duration::from_secs(120), || {
        let dir = newest();
        !before.lines().any(|r| dir.ends_with(r))
            && t.ssh_ok(&format!("grep -c 'slow activation: started' {dir}/log || true")) == "1"
    });
    let fifo = format!("{}/wake.999999", newest());
    t.ssh_ok(&format!(
        "mkfifo -m 600 {fifo} && systemd-run --unit=lab-full-fifo --quiet sh -c \
         'exec 3<>{fifo}; head -c 65536 /dev/zero >&3; exec sleep 600'"
    ));
    let run = bg.finish(Duration::from_secs(400));
    t.ssh_ok("systemctl stop lab-full-fifo");
    eprintln!("{run}");
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.outcome("h"), "deployed", "{run}");
    let sys = run.system("h");
    assert!(sys.contains("slow-activation"), "{sys}");
    assert_on(t, &sys);
}

/// SIGTERM (a cancelled CI job) is Ctrl-C: during a local build, the build
/// stops at once, the host is cancelled unchanged, and the run's temporary
/// directories are gone; during an activation, the host is confirmed and
/// finished, exit 0.
#[test]
fn sigterm_is_handled_like_ctrl_c() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-build", r#"buildOn = "local";"#)]);
    let salt = format!("{}-term-{:?}", std::process::id(), Instant::now());
    std::fs::write(f.join("build-salt"), salt).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut a = Background::start_with(&f, &["--all"], &[("TMPDIR", tmp.path())]);
    a.wait_for("building", Duration::from_secs(120), phase_started("h", "build"));
    eventually("the build runs here", Duration::from_secs(30), local_slow_build_running);
    let sent = Instant::now();
    a.signal("TERM");
    let run = a.finish(Duration::from_secs(30));
    eprintln!("{run}");
    assert!(sent.elapsed() < Duration::from_secs(10), "stopped at once: {:?}", sent.elapsed());
    assert_eq!(run.code, 1, "{run}");
    assert_eq!((run.outcome("h").as_str(), run.reason("h").as_str()), ("cancelled", "cancelled"));
    eventually("the build's processes end", Duration::from_secs(10), || {
        !local_slow_build_running()
    });
    let left = || -> Vec<_> {
        std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.path()).collect()
    };
    eventually("the temporary directories go", Duration::from_secs(10), || left().is_empty());
    assert_on(t, &v1);

    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "timeouts.confirm = 5;")]);
    let mut bg = Background::start(&f, &["--all"]);
    bg.wait_for("activation", Duration::from_secs(120), phase_started("h", "activate"));
    bg.signal("TERM");
    let run = bg.finish(Duration::from_secs(120));
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.outcome("h"), "deployed", "{run}");
    let sys = run.system("h");
    assert!(sys.contains("slow-activation"), "{sys}");
    assert_on(t, &sys);
}
