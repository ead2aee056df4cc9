//! `--reboot` on real targets: a host rebooted into its new boot entry
//! comes back in the new system (a new boot id, /run/booted-system and
//! /run/current-system both the new system); `if-needed` reboots only what
//! needs it; a host that never comes back is reported unknown within the
//! reboot timeout; one that comes back unhealthy was deployed, then failed;
//! a goal without a boot entry is refused up front.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{Lab, Suite, Target};
use crate::helpers::*;

/// Boots, runs and profiles `sys`.
fn assert_runs_and_boots(t: &Target, sys: &str) {
    assert_eq!(t.booted_system().as_deref(), Some(sys), "{}: booted", t.name);
    assert_eq!(t.current_system().as_deref(), Some(sys), "{}: runs", t.name);
    assert_eq!(t.boot_profile().as_deref(), Some(sys), "{}: boots next", t.name);
}

on_every_suite!(reboot_always_comes_back_in_the_new_system);

/// A change deployed with --reboot always: the host reboots into it and
/// comes back in it, healthy; the report says so.
fn reboot_always_comes_back_in_the_new_system(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let before = t.boot_id();
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all", "--reboot", "always"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!((run.outcome("h").as_str(), run.phase("h").as_str()), ("deployed", "reboot"));
    let v2 = run.system("h");
    assert_ne!(v2, v1);
    assert_eq!(run.report("h")["boot"], v2.as_str());
    assert_eq!(run.report("h")["needs_reboot"], json!([]));
    assert_ne!(t.boot_id(), before, "it rebooted");
    assert_runs_and_boots(t, &v2);
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v2");
    assert_eq!(t.system_state(), "running");
    let took = phase_took(&run, "h", "reboot").expect("a reboot phase");
    let back = run.notes("h").into_iter().find(|n| n.starts_with("back after"));
    eprintln!("reboot phase {took:?}; {back:?}; whole run {:?}", run.elapsed);
    assert!(back.is_some(), "{run}");
}

/// `--reboot if-needed`: a change that needs no reboot does not reboot; a
/// new kernel does, and the host comes back in it.
#[test]
fn reboot_if_needed_reboots_only_for_what_needs_it() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    t.reboot(); // so that /run/booted-system is a system of the stand-in
    let before = t.boot_id();
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all", "--reboot", "if-needed"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!((run.outcome("h").as_str(), run.phase("h").as_str()), ("deployed", "boot"));
    assert_eq!(run.report("h")["needs_reboot"], json!([]));
    assert_eq!(t.boot_id(), before, "no reboot");
    assert!(run.notes("h").iter().any(|n| n.starts_with("no reboot needed")), "{run}");
    assert_eq!(t.current_system(), Some(run.system("h")));

    let f = flake(&lab, &[host_entry(&lab, "h", t, "new-kernel", "")]);
    let run = deploy(&f, &["--all", "--reboot", "if-needed"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!((run.outcome("h").as_str(), run.phase("h").as_str()), ("deployed", "reboot"));
    assert_ne!(t.boot_id(), before, "the new kernel took a reboot");
    assert_runs_and_boots(t, &run.system("h"));
    assert_eq!(run.report("h")["needs_reboot"], json!([]), "nothing left to reboot for");
}

/// A host that does not come back from the reboot: exit 3 within the
/// reboot timeout, outcome unknown, and the message says where to look.
#[test]
fn a_host_that_never_comes_back_is_unknown_within_the_reboot_timeout() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    t.stay_down_at_next_reboot();
    let extra = "timeouts = { reboot = 15; connect = 3; };";
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", extra)]);
    let run = deploy(&f, &["--all", "--reboot", "always"]);
    assert_eq!(run.code, 3, "{run}");
    assert_eq!(
        (run.outcome("h").as_str(), run.reason("h").as_str(), run.phase("h").as_str()),
        ("unknown", "timeout", "reboot")
    );
    let msg = run.message("h");
    assert!(msg.contains("h did not come back within 15 s (timeouts.reboot)"), "{msg}");
    assert!(msg.contains("console") && msg.contains("deploy-flake status h"), "{msg}");
    assert_eq!(run.report("h")["system"], Value::Null, "what it runs is not known");
    let took = phase_took(&run, "h", "reboot").expect("a reboot phase");
    eprintln!("never came back: reboot phase {took:?}; whole run {:?}", run.elapsed);
    assert!(took >= Duration::from_secs(15), "gave up early: {took:?}");
    assert!(took < Duration::from_secs(15 + 8), "gave up late: {took:?}");
    assert!(t.console_log().contains("staying down"), "the target did go down");
}

/// --reboot with a goal that writes no boot entry is refused before
/// anything is touched.
#[test]
fn reboot_with_goal_test_is_refused_and_touches_nothing() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let before = t.boot_id();
    let runs = || t.ssh_ok("ls /run/deploy-flake/runs | wc -l");
    let run_dirs = runs();
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all", "--goal", "test", "--reboot", "always"]);
    assert_eq!(run.code, 2, "{run}");
    assert_eq!(run.stdout, "", "no run started");
    assert!(
        run.stderr.contains(
            "--reboot always reboots a host into its new boot entry, but --goal test writes none"
        ),
        "{run}"
    );
    assert_eq!(t.current_system(), Some(v1.clone()));
    assert_eq!(t.boot_profile(), Some(v1));
    assert_eq!(t.boot_id(), before);
    assert_eq!(runs(), run_dirs, "no run reached the host");
}

/// An incompatible init refuses a live switch (exit 100), and the report
/// points at --goal boot --reboot always, which brings the host up in it.
#[test]
fn goal_boot_with_reboot_always_is_the_way_in_for_a_new_init() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "new-init", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!((run.code, run.reason("h").as_str()), (1, "reboot-required"), "{run}");
    assert!(run.message("h").contains("--goal boot --reboot always"), "{run}");
    let before = t.boot_id();
    let run = deploy(&f, &["--all", "--goal", "boot", "--reboot", "always"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!((run.outcome("h").as_str(), run.phase("h").as_str()), ("deployed", "reboot"));
    let new = run.system("h");
    assert!(new.contains("new-init"), "{new}");
    assert_ne!(t.boot_id(), before);
    assert_runs_and_boots(t, &new);
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v2");
}

/// A host that comes back from its reboot in the new system but fails a
/// health check there was changed by the run: it ends
/// `deployed-then-failed` (not `failed`, which says nothing changed), runs
/// and boots the new system, and the run exits 1 (a known state).
#[test]
fn a_host_unhealthy_after_its_reboot_was_deployed_then_failed() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    // /run is memory: the check holds until the host reboots.
    t.ssh_ok("touch /run/lab-before-the-reboot");
    let check = r#"healthChecks = [ { command = [ "test" "-e" "/run/lab-before-the-reboot" ]; period = 1; timeout = 3; } ];"#;
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", check)]);
    let before = t.boot_id();
    let run = deploy(&f, &["--all", "--reboot", "always"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(
        (run.outcome("h").as_str(), run.reason("h").as_str(), run.phase("h").as_str()),
        ("deployed-then-failed", "health-check", "reboot"),
        "{run}"
    );
    let v2 = run.system("h");
    assert_ne!(v2, v1);
    assert!(run.message("h").starts_with(&format!("rebooted into {v2}, but ")), "{run}");
    assert_eq!(run.report("h")["boot"], v2.as_str(), "{run}");
    assert_eq!(run.report("h")["before"], v1.as_str(), "what it ran before the run: {run}");
    assert_ne!(t.boot_id(), before, "it rebooted");
    assert_runs_and_boots(t, &v2);
}
