//! `--reboot` against a fake host: when a host reboots, what it must come
//! back in, and how a host that does not come back (or comes back wrong)
//! ends; and what a soak sees of a host (rebooted or not).

use std::collections::VecDeque;

use super::fake::{at, disconnected, drive, health, path, Fake, Ran, NEW, OLD};
use super::{wants_reboot, End, Goal, Reboot};
use crate::agent::{AgentState, Facts, LockError};
use crate::events::{Event, Outcome, Phase, Reason};
use crate::exit::Exit;
use crate::host::HostError;
use crate::ssh::SshError;

/// A host running OLD, booted into it, where NEW needs `needs` to run.
fn fake(needs: &[&str]) -> Fake {
    let mut f = Fake::new();
    let facts = f.facts.as_mut().unwrap();
    facts.booted = Some(OLD.into());
    facts.reboot_new = Some(needs.iter().map(|s| s.to_string()).collect());
    facts.reboot_profile = Some(Vec::new());
    f
}

/// What the host says after the reboot: booted `booted`, runs `current`,
/// its profile points at NEW.
fn back_in(booted: &str, current: &str) -> VecDeque<Result<Facts, HostError>> {
    let facts = Facts {
        current: Some(current.into()),
        profile: Some(NEW.into()),
        booted: Some(booted.into()),
        switchable: true,
        systemd: true,
        reboot_new: Some(Vec::new()),
        reboot_profile: Some(Vec::new()),
        ..Facts::default()
    };
    [Ok(facts)].into()
}

/// Boot ids: the old one (read before the reboot, then still there), a
/// dropped connection, then a new one.
fn reboots() -> VecDeque<Result<String, HostError>> {
    [Ok("boot-1".into()), Ok("boot-1".into()), Err(disconnected()), Ok("boot-2".into())].into()
}

async fn with(f: Fake, reboot: Reboot) -> Ran {
    drive(f, |_, ctx| ctx.reboot = reboot).await
}

/// The activation was confirmed before the reboot was asked for.
fn confirmed_before_reboot(r: &Ran) -> bool {
    let at = |call: &str| r.calls.iter().position(|c| c == call);
    matches!((at("confirm"), at("reboot")), (Some(c), Some(b)) if c < b)
}

/// The calls from the reboot on.
fn after_reboot(r: &Ran) -> Vec<&str> {
    let from = r.calls.iter().position(|c| c == "reboot").expect("no reboot");
    r.calls[from..].iter().map(String::as_str).collect()
}

#[tokio::test]
async fn never_and_if_needed_with_nothing_needed_do_not_reboot() {
    for (policy, note) in [
        (Reboot::Never, None),
        (Reboot::IfNeeded, Some("no reboot needed: it runs what it boots (--reboot if-needed)")),
    ] {
        let r = with(fake(&[]), policy).await;
        assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)), "{policy:?}");
        assert!(!r.called("reboot") && !r.called("boot-id"), "{policy:?}: {:?}", r.calls);
        assert!(!r.phases().contains(&Phase::Reboot));
        assert_eq!(r.notes().iter().find(|n| n.starts_with("no reboot")).copied(), note);
    }
}

#[tokio::test(start_paused = true)]
async fn if_needed_reboots_for_a_new_kernel_and_checks_the_new_boot() {
    let mut f = fake(&["kernel", "initrd"]);
    f.boot_ids = reboots();
    f.later_facts = back_in(NEW, NEW);
    let r = with(f, Reboot::IfNeeded).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Reboot)), "{}", r.message());
    assert_eq!((r.report.system.as_deref(), r.report.boot.as_deref()), (Some(NEW), Some(NEW)));
    assert_eq!(r.report.needs_reboot, Some(vec![]), "it runs what it boots now");
    assert_eq!(
        after_reboot(&r),
        [
            "reboot",
            "boot-id",
            "boot-id",
            "is-alive",
            "reconnect",
            "boot-id",
            "lock",
            "facts",
            "health",
            "close"
        ]
    );
    assert_eq!(r.phases().last(), Some(&Phase::Reboot));
    let finished = r
        .events
        .iter()
        .any(|e| matches!(e, Event::PhaseFinished { phase: Phase::Reboot, ok: true, .. }));
    assert!(finished, "the reboot phase ends well");
    assert!(r
        .notes()
        .iter()
        .any(|n| n.starts_with("back after") && n.ends_with("(boot id boot-2)")));
}

#[tokio::test(start_paused = true)]
async fn always_reboots_even_when_nothing_is_needed_and_reruns_the_health_checks() {
    let mut f = fake(&[]);
    f.boot_ids = reboots();
    f.later_facts = back_in(NEW, NEW);
    let r = drive(f, |t, ctx| {
        ctx.reboot = Reboot::Always;
        t.spec.health_checks = vec![crate::fleet::HealthCheck {
            description: "web answers".into(),
            probe: crate::fleet::Probe::Command(vec!["true".into()]),
            period: 2,
            timeout: 30,
        }];
    })
    .await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Reboot)), "{}", r.message());
    assert_eq!(after_reboot(&r)[6..], ["lock", "facts", "health", "check web answers", "close"]);
    assert!(r.notes().contains(&"health check passed after the reboot: web answers"));
}

#[tokio::test(start_paused = true)]
async fn goal_boot_with_if_needed_reboots_into_the_entry_it_wrote() {
    let mut f = fake(&[]);
    f.watch = [at(AgentState::Booted)].into();
    f.boot_ids = reboots();
    f.later_facts = back_in(NEW, NEW);
    let r = drive(f, |_, ctx| {
        ctx.goal = Goal::Boot;
        ctx.reboot = Reboot::IfNeeded;
    })
    .await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Reboot)), "{}", r.message());
    assert!(!r.calls.iter().any(|c| c.starts_with("start activate")));
    assert_eq!(r.report.system.as_deref(), Some(NEW), "runs it after the reboot");
}

#[tokio::test(start_paused = true)]
async fn coming_back_in_the_old_system_fails_saying_what_it_booted() {
    let mut f = fake(&["kernel"]);
    f.boot_ids = reboots();
    f.later_facts = back_in(OLD, OLD);
    let r = with(f, Reboot::IfNeeded).await;
    let ended = (Outcome::DeployedThenFailed, Some(Reason::RebootedIntoOld), Some(Phase::Reboot));
    assert_eq!(r.ended(), ended);
    let msg = r.message();
    assert!(msg.contains(&format!("came back in {OLD} instead of {NEW}")), "{msg}");
    assert!(msg.contains("bootloader"), "{msg}");
    assert_eq!((r.report.system.as_deref(), r.report.boot.as_deref()), (Some(OLD), Some(NEW)));
    assert_eq!(crate::exit::exit_for(std::slice::from_ref(&r.report)), Exit::HostsFailed);
    assert_eq!(
        after_reboot(&r)[6..],
        ["lock", "facts", "close"],
        "no health check of the old system"
    );
}

#[tokio::test(start_paused = true)]
async fn a_host_that_never_comes_back_is_unknown_within_the_reboot_timeout() {
    let mut f = fake(&["kernel"]);
    f.boot_ids = [Ok("boot-1".into()), Err(disconnected())].into();
    let refused = "ssh: connect to host web1 port 22: Connection refused";
    f.reconnect =
        Err(SshError::Connect { dest: "root@web1:22".into(), reason: refused.into() }.into());
    let started = tokio::time::Instant::now();
    let r = drive(f, |t, ctx| {
        ctx.reboot = Reboot::Always;
        t.spec.timeouts.reboot = 30;
    })
    .await;
    let took = started.elapsed().as_secs();
    assert_eq!(r.ended(), (Outcome::Unknown, Some(Reason::Timeout), Some(Phase::Reboot)));
    assert!((30..=32).contains(&took), "gave up after {took} s");
    let msg = r.message();
    for part in
        ["web1 did not come back within 30 s (timeouts.reboot)", "Connection refused", "console"]
    {
        assert!(msg.contains(part), "{part}: {msg}");
    }
    assert_eq!((r.report.system.as_deref(), r.report.needs_reboot.as_deref()), (None, None));
    assert_eq!(crate::exit::exit_for(std::slice::from_ref(&r.report)), Exit::UnknownState);
    assert!(r.calls.iter().filter(|c| *c == "reconnect").count() > 10, "it kept trying");
}

#[tokio::test(start_paused = true)]
async fn a_host_that_keeps_its_old_boot_did_not_reboot_and_is_known() {
    let mut f = fake(&["kernel"]);
    f.boot_ids = [Ok("boot-1".into())].into();
    let r = drive(f, |t, ctx| {
        ctx.reboot = Reboot::Always;
        t.spec.timeouts.reboot = 10;
    })
    .await;
    let ended = (Outcome::DeployedThenFailed, Some(Reason::RebootFailed), Some(Phase::Reboot));
    assert_eq!(r.ended(), ended);
    assert!(r.message().contains("still runs the same boot (boot id boot-1)"), "{}", r.message());
    assert_eq!((r.report.system.as_deref(), r.report.boot.as_deref()), (Some(NEW), Some(NEW)));
    assert_eq!(r.report.needs_reboot, Some(vec!["kernel".to_string()]));
    assert!(confirmed_before_reboot(&r), "{:?}", r.calls);
    assert_eq!(crate::exit::exit_for(std::slice::from_ref(&r.report)), Exit::HostsFailed);

    // A refusal to schedule it leaves the host as it is, at once.
    let mut f = fake(&["kernel"]);
    f.reboot = Err(super::fake::failed("systemd-run", "Failed to start transient timer unit"));
    let r = with(f, Reboot::Always).await;
    assert_eq!(r.ended(), ended);
    assert!(r.message().contains("Failed to start transient timer unit"), "{}", r.message());
    assert_eq!(after_reboot(&r), ["reboot", "close"]);
}

#[tokio::test(start_paused = true)]
async fn a_reboot_request_whose_answer_is_lost_is_waited_for() {
    let mut f = fake(&["kernel"]);
    f.reboot = Err(disconnected());
    f.boot_ids = reboots();
    f.later_facts = back_in(NEW, NEW);
    let r = with(f, Reboot::Always).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Reboot)), "{}", r.message());
    assert!(r.notes().iter().any(|n| n.starts_with("asking it to reboot said")), "{:?}", r.notes());
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_host_after_the_reboot_fails_with_the_health_check_reason() {
    let mut f = fake(&["kernel"]);
    f.boot_ids = reboots();
    f.later_facts = back_in(NEW, NEW);
    // Preflight and confirmation were fine; the new boot is not.
    f.health =
        [health("running", &[]), health("running", &[]), health("degraded", &["db.service"])]
            .into();
    let r = with(f, Reboot::IfNeeded).await;
    let ended = (Outcome::DeployedThenFailed, Some(Reason::HealthCheck), Some(Phase::Reboot));
    assert_eq!(r.ended(), ended);
    assert_eq!(
        r.message(),
        format!("rebooted into {NEW}, but system is degraded (failed units: db.service)")
    );
    assert_eq!((r.report.system.as_deref(), r.report.boot.as_deref()), (Some(NEW), Some(NEW)));
    assert_eq!(r.report.before.as_deref(), Some(OLD), "what it ran before the run, not the reboot");
    assert!(confirmed_before_reboot(&r), "{:?}", r.calls);
    assert_eq!(crate::exit::exit_for(std::slice::from_ref(&r.report)), Exit::HostsFailed);
}

#[tokio::test(start_paused = true)]
async fn a_lock_taken_by_another_run_after_the_reboot_does_not_fail_the_host() {
    let mut f = fake(&["kernel"]);
    f.boot_ids = reboots();
    f.later_facts = back_in(NEW, NEW);
    let held =
        HostError::Lock(LockError::Held { holder: "run 9 by ops@elsewhere".into(), run: None });
    f.later_locks = [Err(held)].into();
    let r = with(f, Reboot::IfNeeded).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Reboot)), "{}", r.message());
    assert!(
        r.notes()
            .iter()
            .any(|n| n.contains("run 9 by ops@elsewhere") && n.ends_with("without the lock")),
        "{:?}",
        r.notes()
    );
    assert_eq!(after_reboot(&r)[6..], ["lock", "facts", "health", "close"]);
}

/// Pure: which ends reboot under which policy.
#[test]
fn only_a_host_that_succeeded_and_boots_the_new_system_reboots() {
    let top = path(NEW);
    let end = |outcome, runs: &str, boots: &str, needs: Option<&[&str]>| End {
        outcome,
        system: Some(runs.into()),
        boot: Some(boots.into()),
        needs_reboot: needs.map(|n| n.iter().map(|s| s.to_string()).collect()),
        ..End::unchanged(Reason::Internal, "")
    };
    let table = [
        (end(Outcome::Deployed, NEW, NEW, Some(&[])), [false, false, true]),
        (end(Outcome::Deployed, NEW, NEW, Some(&["kernel"])), [false, true, true]),
        (end(Outcome::Deployed, NEW, NEW, None), [false, false, true]),
        (end(Outcome::Deployed, OLD, NEW, Some(&[])), [false, true, true]),
        (end(Outcome::UpToDate, NEW, NEW, Some(&["init"])), [false, true, true]),
        // --goal test: it runs the new system, boots the old one.
        (end(Outcome::Deployed, NEW, OLD, Some(&["kernel"])), [false, false, false]),
        (end(Outcome::RolledBack, OLD, NEW, Some(&["kernel"])), [false, false, false]),
        (end(Outcome::Unconfirmed, NEW, NEW, Some(&["kernel"])), [false, false, false]),
        (end(Outcome::Unknown, NEW, NEW, Some(&["kernel"])), [false, false, false]),
    ];
    for (e, want) in table {
        let got =
            [Reboot::Never, Reboot::IfNeeded, Reboot::Always].map(|p| wants_reboot(p, &e, &top));
        assert_eq!(got, want, "{e:?}");
    }
}

#[tokio::test]
async fn a_soak_looks_at_the_health_and_the_system_the_host_runs() {
    let spec = crate::fleet::HostSpec::with_defaults("web1");
    let runs = |current: &str| {
        let mut f = Fake::new();
        f.facts.as_mut().unwrap().current = Some(current.into());
        f
    };
    // Rebooted into the deployed system (nothing of the run is left on it,
    // nor needed): healthy, it passes.
    assert_eq!(super::soak_check(&spec, NEW, runs(NEW)).await, Ok(()));
    let why = super::soak_check(&spec, NEW, runs(OLD)).await.unwrap_err();
    assert_eq!(why, format!("it runs {OLD}, not {NEW}, the system deployed"));
    let mut f = runs(NEW);
    f.health = [health("degraded", &["web.service"])].into();
    let why = super::soak_check(&spec, NEW, f).await.unwrap_err();
    assert_eq!(why, "system is degraded; failed since the deploy: web.service");
    let mut f = runs(NEW);
    f.health = [Err(disconnected())].into();
    assert!(super::soak_check(&spec, NEW, f).await.unwrap_err().starts_with("health: "));
}
