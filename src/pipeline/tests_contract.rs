//! The branches of NixOS's switch-to-configuration contract, the goals,
//! and the pipeline's answers to what can go wrong around them, against a
//! fake host: outcome, reason, what the host runs and boots, and the
//! operations done.

use super::fake::{at, drive, failed, path, run, status, Fake, NEW, OLD};
use super::{Goal, Interrupt};
use crate::agent::{AgentState, CheckVerdict, Facts, LockError, SwitchEnv};
use crate::events::{Outcome, Phase, Reason};
use crate::host::HostError;

fn running(current: &str, profile: &str) -> Facts {
    Facts {
        current: Some(current.into()),
        profile: Some(profile.into()),
        switchable: true,
        systemd: true,
        ..Facts::default()
    }
}

fn runs_and_boots(r: &super::fake::Ran) -> (Option<&str>, Option<&str>) {
    (r.report.system.as_deref(), r.report.boot.as_deref())
}

#[tokio::test]
async fn a_switch_in_progress_on_the_host_leaves_it_alone() {
    let mut f = Fake::new();
    f.facts.as_mut().unwrap().busy = vec!["nixos-upgrade.service".into()];
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Busy), Some(Phase::Build)));
    assert!(r.message().contains("nixos-upgrade.service"), "{}", r.message());
    assert!(!r.calls.iter().any(|c| c.starts_with("start") || c.starts_with("pre-switch")));
    assert!(r.rolled_back().is_none());
}

#[tokio::test]
async fn the_pre_switch_checks_refuse_before_anything_changes() {
    let mut f = Fake::new();
    f.pre_switch_check = Ok(CheckVerdict::Refused);
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::PreSwitchCheck), Some(Phase::SelfCheck)));
    let msg = r.message();
    assert!(msg.contains("--no-check") && msg.contains("--goal boot"), "the ways out: {msg}");
    assert!(!r.calls.iter().any(|c| c.starts_with("start")));
    assert_eq!(runs_and_boots(&r), (Some(OLD), Some(OLD)));
    // The check's own output is shown.
    let shown = r.events.iter().any(|e| {
        matches!(e, crate::events::Event::Output { phase: Phase::SelfCheck, line, .. } if line == "pre-switch check output")
    });
    assert!(shown);
}

#[tokio::test]
async fn a_check_that_finds_switch_to_configuration_locked_is_busy() {
    let mut f = Fake::new();
    f.pre_switch_check = Ok(CheckVerdict::Busy);
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Busy), Some(Phase::SelfCheck)));
    assert!(!r.calls.iter().any(|c| c.starts_with("start")));
}

#[tokio::test]
async fn a_system_without_a_check_action_is_activated_with_its_checks() {
    let mut f = Fake::new();
    f.pre_switch_check = Ok(CheckVerdict::Unsupported);
    let r = run(f).await;
    assert_eq!(r.report.outcome, Outcome::Deployed);
    assert!(r.notes().iter().any(|n| n.contains("no `switch-to-configuration check`")));
}

#[tokio::test]
async fn no_check_skips_the_check_and_is_passed_to_activation_and_boot() {
    let env = SwitchEnv { no_check: true, install_bootloader: true };
    let r = drive(Fake::new(), |_, ctx| ctx.switch_env = env).await;
    assert_eq!(r.report.outcome, Outcome::Deployed);
    assert!(!r.calls.iter().any(|c| c.starts_with("pre-switch-check")));
    let activate = "start activate then-boot no-check install-bootloader";
    assert!(r.called(activate), "{:?}", r.calls);
    let r = drive(Fake::new(), |_, ctx| (ctx.switch_env, ctx.goal) = (env, Goal::Boot)).await;
    assert!(r.called("start boot no-check install-bootloader"), "{:?}", r.calls);
}

#[tokio::test]
async fn switch_to_configuration_refusing_test_changes_nothing_and_rolls_nothing_back() {
    let table = [
        (Reason::Busy, "another switch-to-configuration holds its lock", "retry after"),
        (Reason::RebootRequired, "init is incompatible", "--goal boot --reboot always"),
    ];
    for (cause, why, way_out) in table {
        let mut f = Fake::new();
        f.watch = [status(AgentState::Refused, Some(cause), why)].into();
        let r = run(f).await;
        assert_eq!(r.ended(), (Outcome::Failed, Some(cause), Some(Phase::Activate)), "{why}");
        assert!(r.message().contains(why) && r.message().contains(way_out), "{}", r.message());
        assert!(r.rolled_back().is_none(), "{why}: nothing to roll back");
        assert_eq!(runs_and_boots(&r), (Some(OLD), Some(OLD)), "{why}");
        assert!(!r.called("confirm"));
    }
}

#[tokio::test]
async fn a_failed_activation_script_is_its_own_reason_and_rolls_back() {
    let mut f = Fake::new();
    let why = "the activation script failed (switch-to-configuration test exited with 2)";
    f.watch = [status(AgentState::RolledBack, Some(Reason::ActivationScript), why)].into();
    let r = run(f).await;
    assert_eq!(
        r.ended(),
        (Outcome::RolledBack, Some(Reason::ActivationScript), Some(Phase::Activate))
    );
    assert_eq!(r.rolled_back(), Some(Some(Reason::ActivationScript)));
}

#[tokio::test]
async fn goal_test_activates_and_confirms_but_leaves_the_boot_entry() {
    let r = drive(Fake::new(), |_, ctx| ctx.goal = Goal::Test).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Confirm)));
    assert!(r.called("confirm") && !r.calls.iter().any(|c| c.starts_with("start boot")));
    assert_eq!(runs_and_boots(&r), (Some(NEW), Some(OLD)));
}

#[tokio::test]
async fn goal_boot_writes_the_boot_entry_and_activates_nothing() {
    let mut f = Fake::new();
    f.watch = [at(AgentState::Booted)].into();
    let r = drive(f, |_, ctx| ctx.goal = Goal::Boot).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    assert!(r.called("start boot") && !r.called("start activate") && !r.called("confirm"));
    assert!(
        !r.calls.iter().any(|c| c.starts_with("pre-switch-check")),
        "boot skips the live-switch check"
    );
    assert_eq!(runs_and_boots(&r), (Some(OLD), Some(NEW)));
}

#[tokio::test]
async fn a_system_running_unconfirmed_is_activated_and_confirmed_again() {
    // Running it after a manual `test` (or an unconfirmed run): never
    // just write its boot entry.
    let mut f = Fake::new();
    f.facts = Ok(running(NEW, OLD));
    let r = run(f).await;
    assert_eq!(r.report.outcome, Outcome::Deployed);
    assert!(r.called("start activate then-boot") && r.called("confirm"), "{:?}", r.calls);
    assert!(!r.notes().iter().any(|n| n.contains("writing its boot entry")));
}

#[tokio::test]
async fn a_host_whose_boot_entry_was_never_written_is_not_up_to_date() {
    // Profile and running system are the new one, but the bootloader step
    // failed: finish it.
    let mut f = Fake::new();
    f.facts = Ok(Facts { confirmed: true, ..running(NEW, NEW) });
    f.watch = [at(AgentState::Booted)].into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    assert!(r.called("start boot") && !r.called("start activate"));
    // Once written, it is.
    let mut f = Fake::new();
    f.facts = Ok(Facts { confirmed: true, boot_written: true, ..running(NEW, NEW) });
    assert_eq!(run(f).await.report.outcome, Outcome::UpToDate);
}

#[tokio::test]
async fn an_older_generation_or_another_default_entry_is_not_the_boot_entry() {
    // The profile points at the system through an older generation (after
    // --switch-generation or a rollback), or the bootloader's default entry
    // boots another system: the boot entry is written again, not "up to
    // date", and the report says what the host boots until then.
    let written = |f: Facts| Facts { confirmed: true, boot_written: true, ..f };
    for facts in [
        Facts { newest: Some(OLD.into()), ..written(running(NEW, NEW)) },
        Facts { default_entry: Some(OLD.into()), ..written(running(NEW, NEW)) },
    ] {
        let mut f = Fake::new();
        f.facts = Ok(facts.clone());
        f.watch = [at(AgentState::Booted)].into();
        let r = run(f).await;
        assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)), "{facts:?}");
        assert!(r.called("start boot") && !r.called("start activate"), "{:?}", r.calls);
        assert_eq!(r.report.boot.as_deref(), Some(NEW));
        // A boot step that fails leaves the report naming what it boots.
        let mut f = Fake::new();
        f.facts = Ok(facts.clone());
        f.watch = [status(AgentState::BootFailed, Some(Reason::BootEntry), "default entry")].into();
        let r = run(f).await;
        assert_eq!(r.ended(), (Outcome::Unknown, Some(Reason::BootEntry), Some(Phase::Boot)));
    }
    let boots = Facts { default_entry: Some(OLD.into()), ..running(NEW, NEW) };
    assert_eq!(boots.boots(), Some(OLD), "the default entry, where the bootloader says it");
    assert_eq!(running(NEW, NEW).boots(), Some(NEW), "else the profile");
    // The newest generation and the default entry being the system: up to date.
    let mut f = Fake::new();
    let facts = written(running(NEW, NEW));
    f.facts = Ok(Facts { newest: Some(NEW.into()), default_entry: Some(NEW.into()), ..facts });
    assert_eq!(run(f).await.report.outcome, Outcome::UpToDate);
}

#[tokio::test]
async fn an_agent_start_that_errs_but_started_is_followed() {
    let mut f = Fake::new();
    f.start = [Err(failed("systemd-run", "timed out"))].into();
    f.probe = Ok(true);
    let r = run(f).await;
    assert_eq!(r.report.outcome, Outcome::Deployed);
    assert!(r.called("probe") && r.called("confirm"));
    assert!(!r.called("drop-root"), "the agent owns the GC root");
}

#[tokio::test]
async fn an_agent_start_whose_fate_is_unknown_keeps_the_gc_root() {
    let mut f = Fake::new();
    f.start = [Err(failed("systemd-run", "timed out"))].into();
    f.probe = Err(super::fake::disconnected());
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Unknown, Some(Reason::Lost), Some(Phase::Activate)));
    assert!(!r.called("drop-root"), "the activation may be running: {:?}", r.calls);
}

#[tokio::test]
async fn a_host_that_rebooted_during_the_run_is_reported_at_once() {
    let mut f = Fake::new();
    let why = "the run's state is gone from the host: it rebooted";
    f.watch = [status(AgentState::Vanished, Some(Reason::Rebooted), why)].into();
    // It came back in an older generation (picked at its boot menu): not
    // what the run saw before, so only a second look can report it.
    let older = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-older";
    f.later_facts = [Ok(running(older, OLD))].into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Unknown, Some(Reason::Rebooted), Some(Phase::Activate)));
    assert!(r.message().contains("it rebooted"), "{}", r.message());
    // What it runs now is read again (the first facts came with the
    // build) and reported.
    assert_eq!(r.calls.iter().filter(|c| *c == "facts").count(), 1);
    assert_eq!(runs_and_boots(&r), (Some(older), Some(OLD)));
}

#[tokio::test]
async fn ctrl_c_stops_a_copy_in_flight_at_once() {
    let mut f = Fake::new();
    f.copy_hangs = true;
    let (raise, interrupt) = Interrupt::new();
    let raiser = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        raise.raise();
        raise
    });
    let r = drive(f, |_, ctx| ctx.interrupt = interrupt).await;
    drop(raiser.await);
    assert_eq!(r.ended(), (Outcome::Cancelled, Some(Reason::Cancelled), Some(Phase::Copy)));
    assert!(r.called("drop-root") && r.called("close"));
    assert!(!r.calls.iter().any(|c| c.starts_with("build")));
}

#[tokio::test(start_paused = true)]
async fn losing_the_host_lock_to_another_run_while_reconnecting_stops_following() {
    let mut f = Fake::new();
    f.watch.push_front(Err(super::fake::disconnected()));
    f.reconnect = Err(HostError::Lock(LockError::Held {
        holder: "run 9 by ops@elsewhere".into(),
        run: None,
    }));
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Unknown, Some(Reason::Lost), Some(Phase::Activate)));
    assert!(r.message().contains("run 9 by ops@elsewhere"), "{}", r.message());
    assert_eq!(
        r.calls.iter().filter(|c| *c == "reconnect").count(),
        1,
        "no retry against another run"
    );
}

#[tokio::test]
async fn a_report_says_when_the_host_needs_a_reboot() {
    let mut f = Fake::new();
    f.facts.as_mut().unwrap().reboot_new = Some(vec!["kernel".into(), "initrd".into()]);
    f.facts.as_mut().unwrap().reboot_profile = Some(vec![]);
    let r = run(f).await;
    assert_eq!(r.report.needs_reboot, Some(vec!["kernel".to_string(), "initrd".to_string()]));
    assert!(r.notes().contains(&"needs a reboot to run what it boots (kernel, initrd changed)"));
    // Rolled back: it boots what it booted, which needed nothing.
    let mut f = Fake::new();
    f.facts.as_mut().unwrap().reboot_new = Some(vec!["kernel".into()]);
    f.facts.as_mut().unwrap().reboot_profile = Some(vec![]);
    f.watch = [status(AgentState::RolledBack, Some(Reason::ActivationFailed), "x")].into();
    assert_eq!(run(f).await.report.needs_reboot, Some(vec![]));
}

#[tokio::test]
async fn a_boot_entry_refused_by_the_pre_switch_checks_says_what_runs_and_boots() {
    let mut f = Fake::new();
    let why = "the pre-switch checks refused the boot entry; the system profile points at the old one again";
    f.watch = [
        at(AgentState::AwaitingConfirmation),
        at(AgentState::Confirmed),
        status(AgentState::BootFailed, Some(Reason::PreSwitchCheck), why),
    ]
    .into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Unknown, Some(Reason::PreSwitchCheck), Some(Phase::Boot)));
    assert!(r.message().contains(NEW) && r.message().contains(why), "{}", r.message());
    assert_eq!(r.report.system.as_deref(), Some(NEW));
    let _ = path(OLD);
    // With --goal boot nothing was activated: the host runs what it ran.
    let mut f = Fake::new();
    f.watch = [status(AgentState::BootFailed, Some(Reason::PreSwitchCheck), why)].into();
    let r = drive(f, |_, ctx| ctx.goal = Goal::Boot).await;
    assert_eq!(r.ended(), (Outcome::Unknown, Some(Reason::PreSwitchCheck), Some(Phase::Boot)));
    assert_eq!(r.report.system.as_deref(), Some(OLD));
    assert!(r.message().contains(&format!("the host runs {OLD}, as before")), "{}", r.message());
    assert!(!r.message().contains(&format!("the new system {NEW} runs")), "{}", r.message());
}
