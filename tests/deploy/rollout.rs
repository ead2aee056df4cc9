//! Rollouts on real targets: canaries first, waves in order, a failure
//! budget that stops new waves, and a soak that catches a change that
//! passed its confirmation. Every test asserts what each host runs and
//! boots afterwards, and what was reported.

use std::time::Duration;

use serde_json::Value;

use crate::common::{Lab, Suite, Target};
use crate::helpers::*;

/// Every host of `hosts` (attr, target) runs `configuration` (one run).
fn baseline_all(lab: &Lab, hosts: &[(&str, &Target)], configuration: &str) -> String {
    let entries: Vec<String> =
        hosts.iter().map(|(a, t)| host_entry(lab, a, t, configuration, "")).collect();
    let run = deploy(&flake(lab, &entries), &["--all"]);
    assert_eq!(run.code, 0, "baseline deploy of {configuration} failed:\n{run}");
    let sys = run.system(hosts[0].0);
    for (_, t) in hosts {
        assert_eq!(t.current_system().as_deref(), Some(sys.as_str()));
    }
    sys
}

/// The host runs and boots `system`, as before the run.
fn untouched(t: &Target, system: &str, what: &str) {
    assert_eq!(t.current_system().as_deref(), Some(system), "{what}: running system changed");
    assert_eq!(t.boot_profile().as_deref(), Some(system), "{what}: boot entry changed");
}

/// The events named `name`.
fn named(run: &Run, name: &str) -> Vec<Value> {
    events(&run.stdout).into_iter().filter(|e| e["event"] == name).collect()
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// A canary whose change fails to activate rolls back; no other host is
/// touched and each is reported skipped, with the reason.
#[test]
fn a_failing_canary_rolls_back_and_no_other_host_is_touched() {
    let lab = Lab::boot(3, Suite::Bookworm);
    let (a, b, c) = (&lab.targets[0], &lab.targets[1], &lab.targets[2]);
    let v1 = baseline_all(&lab, &[("a", a), ("b", b), ("c", c)], "healthy-v1");
    let f = flake(
        &lab,
        &[
            host_entry(&lab, "a", a, "healthy-v2", ""),
            host_entry(&lab, "b", b, "healthy-v2", ""),
            host_entry(&lab, "c", c, "failing-unit", ""),
        ],
    );
    let run = deploy(&f, &["--all", "--canary", "c"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("c"), "rolled-back", "{run}");
    untouched(c, &v1, "the canary, rolled back");
    for (h, t) in [("a", a), ("b", b)] {
        assert_eq!((run.outcome(h), run.reason(h)), ("skipped".into(), "halted".into()), "{run}");
        let msg = run.message(h);
        assert!(msg.contains("halted after wave 1: 1 host failed (c)"), "{msg}");
        assert!(msg.contains("--max-failures 0"), "{msg}");
        untouched(t, &v1, h);
    }
    let waves = named(&run, "wave-started");
    assert_eq!(waves.len(), 1, "only the canary wave started: {run}");
    assert_eq!(
        (waves[0]["canary"].as_bool(), names(&waves[0]["hosts"])),
        (Some(true), vec!["c".into()])
    );
    let halted = &named(&run, "rollout-halted")[0];
    assert_eq!(names(&halted["failed"]), ["c"]);
    assert_eq!(names(&halted["skipped"]), ["a", "b"]);
    // This run never reached the untouched hosts.
    let id = named(&run, "run-started")[0]["run_id"].as_str().unwrap().to_string();
    for t in [a, b] {
        assert_eq!(
            t.ssh_ok(&format!("test -e /run/deploy-flake/runs/{id} && echo yes || echo no")),
            "no"
        );
    }
    assert_eq!(
        c.ssh_ok(&format!("test -e /run/deploy-flake/runs/{id} && echo yes || echo no")),
        "yes"
    );
}

/// A change that passes its confirmation, then a service dies: with a
/// soak longer than that, the canary returns to its previous system after
/// the soak and nothing else is touched; without a soak the same change
/// lands on every host.
#[test]
fn a_soak_catches_a_service_that_dies_after_its_confirmation() {
    let lab = Lab::boot(3, Suite::Trixie);
    let (a, b, c) = (&lab.targets[0], &lab.targets[1], &lab.targets[2]);
    let hosts = [("a", a), ("b", b), ("c", c)];
    let v1 = baseline_all(&lab, &hosts, "healthy-v1");
    let entries: Vec<String> =
        hosts.iter().map(|(h, t)| host_entry(&lab, h, t, "dies-later", "")).collect();
    let f = flake(&lab, &entries);

    let run = deploy(&f, &["--all", "--canary", "c", "--soak", "35"]);
    eprintln!("{}", run.stdout);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!((run.outcome("c"), run.reason("c")), ("rolled-back".into(), "soak".into()), "{run}");
    let msg = run.message("c");
    assert!(msg.contains("failed its check 35 s after its wave"), "{msg}");
    assert!(msg.contains("demo-dies.service"), "names the unit that failed: {msg}");
    assert!(msg.contains("returned to the system it ran before this run"), "{msg}");
    untouched(c, &v1, "the canary, returned after its soak");
    assert_eq!(run.system("c"), v1);
    for (h, t) in [("a", a), ("b", b)] {
        assert_eq!(run.outcome(h), "skipped", "{run}");
        untouched(t, &v1, h);
    }
    let soak = &named(&run, "soak-finished")[0];
    assert_eq!(soak["failed"][0]["host"], "c", "{soak}");
    assert!(named(&run, "soak-started")[0]["seconds"] == 35);
    // Its deploy had confirmed it: the soak, not the confirmation, caught it.
    let rolled = named(&run, "rolled-back");
    assert_eq!(rolled.len(), 1, "{run}");
    assert_eq!(rolled[0]["cause"], "soak");

    // Without a soak, the same change lands everywhere...
    let run = deploy(&f, &["--all", "--canary", "c", "--soak", "0"]);
    assert_eq!(run.code, 0, "{run}");
    for (h, t) in hosts {
        assert_eq!(run.outcome(h), "deployed", "{run}");
        assert_eq!(t.current_system().as_deref(), Some(run.system(h).as_str()));
        assert_eq!(t.boot_profile().as_deref(), Some(run.system(h).as_str()));
    }
    // ... and is as broken everywhere, once its service dies.
    for (h, t) in hosts {
        eventually(&format!("{h} degraded"), Duration::from_secs(60), || {
            t.ssh_ok("systemctl is-failed demo-dies.service || true") == "failed"
        });
    }
}

/// `--batches 1,2,100%` on five hosts: three waves of 1, 2 and 2 hosts,
/// each starting only once the previous one has ended.
#[test]
fn batches_run_in_order_and_a_wave_starts_after_the_previous_ended() {
    let lab = Lab::boot(5, Suite::Bookworm);
    let hosts: Vec<(String, &Target)> =
        lab.targets.iter().enumerate().map(|(i, t)| (format!("h{}", i + 1), t)).collect();
    let entries: Vec<String> =
        hosts.iter().map(|(h, t)| host_entry(&lab, h, t, "healthy-v2", "")).collect();
    let run = deploy(&flake(&lab, &entries), &["--all", "--batches", "1,2,100%"]);
    assert_eq!(run.code, 0, "{run}");
    for (h, t) in &hosts {
        assert_eq!(run.outcome(h), "deployed", "{run}");
        assert_eq!(t.current_system().as_deref(), Some(run.system(h).as_str()));
    }
    let all = events(&run.stdout);
    let ts = |e: &Value| e["ts"].as_u64().expect("every event has ts");
    let started = named(&run, "wave-started");
    let finished = named(&run, "wave-finished");
    let got: Vec<Vec<String>> = started.iter().map(|w| names(&w["hosts"])).collect();
    assert_eq!(got, [vec!["h1"], vec!["h2", "h3"], vec!["h4", "h5"]]);
    assert_eq!(finished.len(), 3);
    for w in 1..3 {
        let prev_end = ts(&finished[w - 1]);
        assert!(ts(&started[w]) >= prev_end, "wave {} started before wave {w} ended", w + 1);
        for host in names(&started[w]["hosts"]) {
            let first = all.iter().find(|e| e["event"] == "phase-started" && e["host"] == host);
            assert!(ts(first.unwrap()) >= prev_end, "{host} started before wave {w} ended");
        }
        for host in names(&started[w - 1]["hosts"]) {
            let end =
                all.iter().find(|e| e["event"] == "host-finished" && e["report"]["host"] == host);
            assert!(
                ts(end.unwrap()) <= ts(&started[w]),
                "{host} still ran when wave {} started",
                w + 1
            );
        }
    }
}

/// `--max-failures 1` over four one-host waves where the first and the
/// third fail: the run goes past the first failure and halts at the second.
#[test]
fn the_failure_budget_lets_one_failure_pass_and_halts_at_the_second() {
    let lab = Lab::boot(4, Suite::Trixie);
    let t = &lab.targets;
    let v1 =
        baseline_all(&lab, &[("a", &t[0]), ("b", &t[1]), ("c", &t[2]), ("d", &t[3])], "healthy-v1");
    let f = flake(
        &lab,
        &[
            host_entry(&lab, "a", &t[0], "failing-selfcheck", ""),
            host_entry(&lab, "b", &t[1], "healthy-v2", ""),
            host_entry(&lab, "c", &t[2], "failing-unit", ""),
            host_entry(&lab, "d", &t[3], "healthy-v2", ""),
        ],
    );
    let run = deploy(&f, &["--all", "--batches", "1", "--max-failures", "1"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("a"), "failed", "{run}");
    assert_eq!(run.outcome("b"), "deployed", "went on past the first failure: {run}");
    assert_eq!(run.outcome("c"), "rolled-back", "{run}");
    assert_eq!((run.outcome("d"), run.reason("d")), ("skipped".into(), "halted".into()));
    assert!(run
        .message("d")
        .contains("2 hosts failed (a, c), more than --max-failures 1 allows (1)"));
    untouched(&t[0], &v1, "a");
    untouched(&t[2], &v1, "c");
    untouched(&t[3], &v1, "d, skipped");
    assert_eq!(t[1].current_system().as_deref(), Some(run.system("b").as_str()));
    let halted = named(&run, "rollout-halted");
    assert_eq!((halted.len(), halted[0]["wave"].as_u64()), (1, Some(3)), "{run}");
    assert_eq!(named(&run, "wave-started").len(), 3);
}

/// Ctrl-C during a soak ends it at once: its hosts are not checked again,
/// no further wave starts, and the hosts of the next wave are unchanged.
#[test]
fn ctrl_c_during_a_soak_stops_before_the_next_wave() {
    let lab = Lab::boot(2, Suite::Bookworm);
    let (a, b) = (&lab.targets[0], &lab.targets[1]);
    let v1 = baseline_all(&lab, &[("a", a), ("b", b)], "healthy-v1");
    let f = flake(
        &lab,
        &[host_entry(&lab, "a", a, "healthy-v2", ""), host_entry(&lab, "b", b, "healthy-v2", "")],
    );
    let mut bg = Background::start(&f, &["--all", "--batches", "1", "--soak", "300"]);
    bg.wait_for("the soak of wave 1", Duration::from_secs(180), |v| v["event"] == "soak-started");
    bg.signal("INT");
    let run = bg.finish(Duration::from_secs(30));
    assert_eq!(run.code, 1, "{run}");
    let soak = &named(&run, "soak-finished")[0];
    assert_eq!(soak["interrupted"], true, "{run}");
    // Deployed, but its soak never checked it again.
    assert_eq!((run.outcome("a"), run.reason("a")), ("unchecked".into(), "cancelled".into()));
    assert_eq!(run.outcome("b"), "cancelled", "{run}");
    assert_eq!(a.current_system().as_deref(), Some(run.system("a").as_str()));
    untouched(b, &v1, "b, in the wave after the interrupted soak");
    assert_eq!(named(&run, "wave-started").len(), 1);
}

/// Ctrl-C during the soak of the last wave: its hosts were never checked
/// again, and the run does not say they succeeded: exit 1, each host
/// `unchecked`, running the system deployed (left as it is).
#[test]
fn ctrl_c_during_the_last_soak_leaves_its_hosts_unchecked() {
    let lab = Lab::boot(1, Suite::Trixie);
    let a = &lab.targets[0];
    baseline_all(&lab, &[("a", a)], "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "a", a, "healthy-v2", "")]);
    let mut bg = Background::start(&f, &["--all", "--soak", "300"]);
    bg.wait_for("the soak", Duration::from_secs(180), |v| v["event"] == "soak-started");
    bg.signal("INT");
    let run = bg.finish(Duration::from_secs(30));
    eprintln!("{run}");
    assert_eq!(run.code, 1, "{run}");
    assert_eq!((run.outcome("a"), run.reason("a")), ("unchecked".into(), "cancelled".into()));
    let sys = run.system("a");
    assert!(sys.contains("healthy-v2"), "{sys}");
    assert!(run.message("a").contains("interrupted before its soak checked it"), "{run}");
    assert_eq!(named(&run, "soak-finished")[0]["interrupted"], true);
    assert_eq!(named(&run, "run-finished")[0]["exit_code"], 1);
    assert_eq!(a.current_system().as_deref(), Some(sys.as_str()));
    assert_eq!(a.boot_profile().as_deref(), Some(sys.as_str()));
}

/// A host rebooted by someone else during its soak, back in the system
/// deployed and healthy, passes the soak: it is not taken back.
#[test]
fn a_host_rebooted_during_its_soak_into_the_deployed_system_passes() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let a = &lab.targets[0];
    baseline_all(&lab, &[("a", a)], "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "a", a, "healthy-v2", "")]);
    let mut bg = Background::start(&f, &["--all", "--soak", "20"]);
    bg.wait_for("the soak", Duration::from_secs(180), |v| v["event"] == "soak-started");
    let boot = a.boot_id();
    a.reboot();
    assert_ne!(a.boot_id(), boot, "it rebooted during the soak");
    let run = bg.finish(Duration::from_secs(120));
    eprintln!("{run}");
    assert_eq!(run.code, 0, "{run}");
    assert_eq!((run.outcome("a").as_str(), run.reason("a").as_str()), ("deployed", ""));
    let soak = &named(&run, "soak-finished")[0];
    assert_eq!(names(&soak["passed"]), ["a"], "{soak}");
    assert!(named(&run, "rolled-back").is_empty(), "{run}");
    let sys = run.system("a");
    assert_eq!(a.current_system().as_deref(), Some(sys.as_str()));
    assert_eq!(a.boot_profile().as_deref(), Some(sys.as_str()));
    assert_eq!(a.booted_system().as_deref(), Some(sys.as_str()));
}
