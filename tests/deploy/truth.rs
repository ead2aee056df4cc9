//! The report is true, whatever happens around a deploy: a deployer that
//! stalls past its lock, a switch by someone else during the confirmation,
//! systemd that does not answer for a moment, a connection that hangs, a
//! clock that jumps, a lock holder killed by a signal. Each test asserts
//! what the host runs and boots, and what the tool reported (outcome,
//! reason, message) and exited with.

use std::time::{Duration, Instant};

use crate::common::{Lab, Suite, Target};
use crate::helpers::*;

fn assert_on(t: &Target, sys: &str) {
    assert_eq!(t.current_system().as_deref(), Some(sys), "{}: runs", t.name);
    assert_eq!(t.boot_profile().as_deref(), Some(sys), "{}: boots", t.name);
}

/// Outcome, reason and exit code in one comparison.
fn ended(run: &Run, host: &str) -> (String, String, i32) {
    (run.outcome(host), run.reason(host), run.code)
}

/// `/usr/local/bin/NAME` on the target (ahead of the real one on the
/// agent's PATH): `body` is its shell text.
fn wrapper(t: &Target, name: &str, body: &str) {
    let path = format!("/usr/local/bin/{name}");
    t.ssh_ok(&format!("printf '%s\\n' '#!/bin/sh' '{body}' > {path} && chmod +x {path}"));
}

/// A `date` whose `date +%s` is `step` seconds off (other uses pass).
fn clock_step(t: &Target, step: i64) {
    let body = format!(
        "if [ \"$1\" = +%s ]; then echo $(( $(/bin/date +%s) + ({step}) )); else exec /bin/date \"$@\"; fi"
    );
    wrapper(t, "date", &body.replace('\'', "'\\''"));
}

/// A deployer stopped for 40 s in its build (a suspended laptop) loses the
/// host lock; a second deployer takes it and deploys. The first, resumed,
/// finds it lost and changes nothing: the host runs what the second
/// deployed, and both reports are true.
#[test]
fn a_deployer_stalled_past_its_lock_changes_nothing_and_says_so() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let slow = flake(&lab, &[host_entry(&lab, "h", t, "slow-build", "")]);
    let mut a = Background::start(&slow, &["--all"]);
    a.wait_for("A builds, holding the lock", Duration::from_secs(120), phase_started("h", "build"));
    a.signal("STOP");
    std::thread::sleep(Duration::from_secs(40));
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let b = deploy(&f, &["--all"]);
    a.signal("CONT");
    let a = a.finish(Duration::from_secs(180));
    eprintln!("A: {:?} {}\nB: {:?}", ended(&a, "h"), a.message("h"), ended(&b, "h"));
    assert_eq!(ended(&b, "h"), ("deployed".into(), "".into(), 0), "{b}");
    let v2 = b.system("h");
    assert_eq!(ended(&a, "h"), ("failed".into(), "lock-lost".into(), 1), "{a}");
    assert!(a.message("h").contains("lost the host lock"), "{a}");
    assert_eq!(a.system("h"), v2, "A reports what the host runs: {a}");
    assert_on(t, &v2);
}

/// Someone switches the host back to the old system while the deployer
/// runs its health check: the agent does not record the confirmation nor
/// write the boot entry, and the report says the host was superseded and
/// what it runs.
#[test]
fn a_foreign_switch_during_the_confirmation_is_reported_superseded() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let sleeps = r#"healthChecks = [ { command = [ "sleep" "6" ]; timeout = 20; } ];"#;
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", sleeps)]);
    let mut a = Background::start(&f, &["--all"]);
    a.wait_for("the confirmation", Duration::from_secs(180), phase_started("h", "confirm"));
    let out = t.switch(&v1, "test");
    assert!(out.status.success(), "the foreign switch: {out:?}");
    let run = a.finish(Duration::from_secs(120));
    eprintln!(
        "{:?} {} (system {:?})",
        ended(&run, "h"),
        run.message("h"),
        run.report("h")["system"]
    );
    assert_eq!(ended(&run, "h"), ("superseded".into(), "superseded".into(), 1), "{run}");
    assert_eq!(run.system("h"), v1, "{run}");
    assert!(run.message("h").contains(&v1), "names what the host runs: {run}");
    assert_on(t, &v1);
    let confirmed = t.ssh_ok("ls /var/lib/deploy-flake/confirmed");
    assert!(!confirmed.contains("healthy-v2"), "no confirmation recorded: {confirmed}");
}

/// One `systemctl is-active` of the agent's unit fails (a busy or
/// re-executing systemd): the activation is followed on, and deploys.
#[test]
fn one_failed_systemctl_does_not_make_the_agent_vanish() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    wrapper(
        t,
        "systemctl",
        r#"case "$*" in *is-active*deploy-flake-*) if [ ! -e /run/lab-systemctl-failed ]; then : > /run/lab-systemctl-failed; echo "Failed to connect to bus: lab" >&2; exit 1; fi ;; esac; exec /usr/bin/systemctl "$@""#,
    );
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "")]);
    let run = deploy(&f, &["--all"]);
    eprintln!("{:?} {}", ended(&run, "h"), run.message("h"));
    assert_eq!(ended(&run, "h"), ("deployed".into(), "".into(), 0), "{run}");
    assert_on(t, &run.system("h"));
}

/// systemd re-executes itself again and again during a 6 s activation:
/// deployed, every time.
#[test]
fn systemd_reexecuting_during_the_activation_does_not_make_the_agent_vanish() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "")]);
    for i in 0..3 {
        let mut a = Background::start(&f, &["--all", "--force"]);
        a.wait_for("the activation", Duration::from_secs(180), |v| {
            v["event"] == "output"
                && v["line"].as_str().unwrap_or("").contains("slow activation: started")
        });
        let reexec =
            t.ssh("timeout 7 sh -c 'while :; do systemctl daemon-reexec; sleep 0.3; done'");
        let run = a.finish(Duration::from_secs(180));
        eprintln!("{i}: {:?} {} ({:?})", ended(&run, "h"), run.message("h"), reexec.status);
        assert_eq!(ended(&run, "h"), ("deployed".into(), "".into(), 0), "{run}");
        // (A login right after the last re-execution may be refused.)
        eventually("a login", Duration::from_secs(30), || t.ssh("true").status.success());
        assert_on(t, &run.system("h"));
    }
}

/// The master connection hangs right after the activation (its packets
/// dropped while the agent answers the watch that saw it end; new
/// connections pass): the deployer reconnects, takes its own lock back at
/// once and renews the host's window before it ends: the healthy change
/// stands.
#[test]
fn a_blackholed_connection_reconnects_and_the_change_stands() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    // The health the watch answers with takes 4 s once asked to: the
    // moment the activation has ended, before the deployer hears of it.
    wrapper(
        t,
        "systemctl",
        r#"case "$*" in *SystemState*) if [ -e /run/lab-hold-health ]; then rm -f /run/lab-hold-health; : > /run/lab-health-held; sleep 4; fi ;; esac; exec /usr/bin/systemctl "$@""#,
    );
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "")]);
    let mut a = Background::start(&f, &["--all"]);
    a.wait_for("the activation", Duration::from_secs(180), phase_started("h", "activate"));
    t.ssh_ok(": > /run/lab-hold-health");
    eventually("the activation ended", Duration::from_secs(30), || {
        t.ssh("test -e /run/lab-health-held").status.success()
    });
    let (port, _) = master_to(&t.address);
    blackhole(t, port);
    let cut = Instant::now();
    let run = a.finish(Duration::from_secs(240));
    let notes = run.notes("h");
    eprintln!(
        "{:?} {} after {:?}; notes {notes:?}",
        ended(&run, "h"),
        run.message("h"),
        cut.elapsed()
    );
    assert_eq!(ended(&run, "h"), ("deployed".into(), "".into(), 0), "{run}");
    assert!(notes.iter().any(|n| n.starts_with("reconnected")), "{run}");
    assert_on(t, &run.system("h"));
}

/// `timeouts.confirm = 3`, and the host takes 12 s to answer the health
/// check before the confirmation: the host's window is raised to two
/// heartbeats and slack, so a deployer that is alive and beating is waited
/// for; deployed, and the run says why the window is longer.
#[test]
fn a_short_confirm_timeout_does_not_roll_back_a_live_deployer() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    wrapper(
        t,
        "systemctl",
        r#"case "$*" in *SystemState*) if [ -e /run/lab-hold-health ]; then rm -f /run/lab-hold-health; sleep 12; fi ;; esac; exec /usr/bin/systemctl "$@""#,
    );
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "timeouts.confirm = 3;")]);
    let mut a = Background::start(&f, &["--all"]);
    a.wait_for("the activation", Duration::from_secs(180), phase_started("h", "activate"));
    t.ssh_ok(": > /run/lab-hold-health");
    let run = a.finish(Duration::from_secs(180));
    let notes = run.notes("h");
    eprintln!("{:?} {}; notes {notes:?}", ended(&run, "h"), run.message("h"));
    assert_eq!(ended(&run, "h"), ("deployed".into(), "".into(), 0), "{run}");
    assert!(notes.iter().any(|n| n.ends_with("it waits 15 s")), "{notes:?}");
    assert_on(t, &run.system("h"));
}

/// The target's clock steps 60 s forward during the confirmation: no
/// deadline on the target moves with it; deployed.
#[test]
fn a_clock_step_forward_during_the_confirmation_rolls_nothing_back() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let sleeps = r#"healthChecks = [ { command = [ "sleep" "5" ]; timeout = 20; } ];"#;
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", sleeps)]);
    let mut a = Background::start(&f, &["--all"]);
    a.wait_for("the confirmation", Duration::from_secs(180), phase_started("h", "confirm"));
    clock_step(t, 60);
    let run = a.finish(Duration::from_secs(120));
    eprintln!("{:?} {}", ended(&run, "h"), run.message("h"));
    assert_eq!(ended(&run, "h"), ("deployed".into(), "".into(), 0), "{run}");
    assert_on(t, &run.system("h"));
}

/// The target's clock steps an hour back during the confirmation, and the
/// deployer is killed: the host rolls back within its window, not an hour
/// later.
#[test]
fn a_clock_step_back_and_a_killed_deployer_roll_back_within_the_window() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    // The window: timeouts.confirm (10 s) and the check (20 s + 2 s).
    let sleeps = r#"timeouts.confirm = 10; healthChecks = [ { command = [ "sleep" "30" ]; timeout = 20; } ];"#;
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", sleeps)]);
    let mut a = Background::start(&f, &["--all"]);
    a.wait_for("the confirmation", Duration::from_secs(180), phase_started("h", "confirm"));
    clock_step(t, -3600);
    a.signal("KILL");
    let _ = a.finish(Duration::from_secs(10));
    let took = eventually("the host rolls back", Duration::from_secs(32 + 30), || {
        t.current_system().as_deref() == Some(v1.as_str())
    });
    eprintln!("rolled back {took:?} after the deployer was killed");
    assert_on(t, &v1);
    let status = t.ssh_ok("cat \"$(ls -td /run/deploy-flake/runs/*/ | head -n 1)status\"");
    assert!(status.starts_with("rolled-back not-confirmed"), "{status}");
}

/// The lock holder is killed by a signal (its deployer stopped): `status`
/// shows no lock that nobody holds.
#[test]
fn a_lock_holder_killed_by_a_signal_leaves_no_phantom_lock() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let slow = flake(&lab, &[host_entry(&lab, "h", t, "slow-build", "")]);
    let mut a = Background::start(&slow, &["--all"]);
    a.wait_for("A builds, holding the lock", Duration::from_secs(120), phase_started("h", "build"));
    a.signal("STOP");
    t.ssh_ok("pkill -KILL -f 'agent-.*[.]sh hold'");
    eventually("the lock is free", Duration::from_secs(10), || {
        t.ssh_ok("flock -n /run/deploy-flake/lock true && echo free || echo held") == "free"
    });
    let run = deploy(&slow, &["status", "h"]);
    a.signal("KILL");
    let _ = a.finish(Duration::from_secs(10));
    let doc = run.looked();
    let lock = &doc["hosts"][0]["state"]["lock"];
    eprintln!("status: lock {lock}");
    assert_eq!(run.code, 0, "{run}");
    assert!(lock.is_null(), "a lock nobody holds: {lock}");
}

/// The host lock cannot be taken because /run/deploy-flake is full: the
/// report names that, not "not a NixOS system", and nothing changes.
#[test]
fn a_lock_that_cannot_be_taken_names_its_cause() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    t.ssh_ok("rm -rf /run/deploy-flake && mkdir -m 0700 /run/deploy-flake && mount -t tmpfs -o size=8k,mode=0700 lab-full /run/deploy-flake");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all"]);
    eprintln!("{:?} {}", ended(&run, "h"), run.message("h"));
    assert_eq!(ended(&run, "h"), ("failed".into(), "lock-failed".into(), 1), "{run}");
    assert!(run.message("h").contains("No space left on device"), "{run}");
    assert_on(t, &v1);
}
