//! Every branch of the pipeline against a fake host: the outcome, the
//! reason, the events emitted and the operations done, in order.

use super::fake::{self, at, disconnected, drive, failed, health, path, run, status, timeout};
use super::fake::{Fake, NEW, OLD};
use super::{Goal, Mode};
use crate::agent::AgentState;
use crate::agent::LockError;
use crate::events::{Event, Outcome, Phase, Reason};
use crate::fleet::HealthCheck;
use crate::host::HostError;
use crate::ssh::SshError;

/// The phases of a deploy without --reboot, in order.
fn switch_phases() -> Vec<Phase> {
    Phase::ALL.into_iter().filter(|p| *p != Phase::Reboot).collect()
}

#[tokio::test]
async fn a_healthy_host_goes_through_every_phase_in_order() {
    let r = run(Fake::new()).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    assert_eq!(r.report.system.as_deref(), Some(NEW));
    assert_eq!(r.phases(), switch_phases());
    let calls = [
        "connect",
        "lock",
        "archive .",
        "copy 1",
        "build web1",
        "pre-switch-check",
        "start activate then-boot",
        "watch - health",
        "confirm",
        "watch awaiting-confirmation",
        "watch confirmed",
        "close",
    ];
    assert_eq!(r.calls, calls);
    // Every phase that started finished well, and output is tagged with its phase.
    let finished: Vec<_> = r
        .events
        .iter()
        .filter_map(|e| match e {
            Event::PhaseFinished { phase, ok, .. } => Some((*phase, *ok)),
            _ => None,
        })
        .collect();
    assert_eq!(finished, switch_phases().into_iter().map(|p| (p, true)).collect::<Vec<_>>());
    let activating =
        Event::Output { host: "web1".into(), phase: Phase::Activate, line: "activating".into() };
    assert!(r.events.contains(&activating));
    assert!(r.notes().contains(&format!("built {NEW}").as_str()));
}

#[tokio::test]
async fn connection_failures_say_why_and_touch_nothing() {
    let cases = [
        ("ssh: connect to host web1 port 22: Connection refused", Reason::Unreachable),
        ("Host key verification failed.", Reason::HostKey),
        ("root@web1: Permission denied (publickey).", Reason::Auth),
    ];
    for (reason, want) in cases {
        let mut f = Fake::new();
        f.connect =
            Err(SshError::Connect { dest: "root@web1:22".into(), reason: reason.into() }.into());
        let r = run(f).await;
        assert_eq!(r.ended(), (Outcome::Failed, Some(want), Some(Phase::Connect)), "{reason}");
        assert_eq!(r.calls, ["connect"]);
        assert!(r.message().starts_with("cannot connect to root@web1:22: "), "{}", r.message());
    }
}

#[tokio::test]
async fn a_locked_host_is_left_alone() {
    let mut f = Fake::new();
    f.lock = Err(LockError::Held { holder: "run 7 by ops@laptop".into(), run: None }.into());
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Locked), Some(Phase::Lock)));
    assert!(r.message().contains("run 7 by ops@laptop"), "{}", r.message());
    assert_eq!(r.calls, ["connect", "lock", "drop-root", "close"]);
}

#[tokio::test]
async fn a_host_whose_run_has_no_room_is_refused_at_preflight_unchanged() {
    let said = "/run has 12 KiB free; a run needs 4096 KiB there";
    for skip_preflight in [false, true] {
        let mut f = Fake::new();
        f.lock = Err(LockError::NoSpace { said: said.into() }.into());
        let r = drive(f, |_, ctx| ctx.skip_preflight = skip_preflight).await;
        assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Preflight), Some(Phase::Preflight)));
        assert_eq!(r.message(), format!("preflight: {said}"));
        assert_eq!(r.calls, ["connect", "lock", "drop-root", "close"]);
    }
}

#[tokio::test]
async fn ask_deploys_only_the_change_shown_to_the_host_that_ran_what_it_ran_then() {
    use super::Approved;
    let approve = |system: &str, running: Option<&str>| {
        let a = Approved { system: system.into(), running: running.map(String::from) };
        Some(std::sync::Arc::new([("web1".to_string(), a)].into()))
    };
    let cases = [
        (approve(NEW, Some(OLD)), None),
        (approve(OLD, Some(OLD)), Some("the system shown and approved was")),
        (approve(NEW, Some(NEW)), Some("when its changes were shown and runs")),
        (approve(NEW, None), Some("it ran no system when its changes were shown")),
        (Some(std::sync::Arc::default()), Some("its changes could not be shown")),
    ];
    for (approved, refused) in cases {
        let r = drive(Fake::new(), |_, ctx| ctx.approved = approved.clone()).await;
        match refused {
            None => assert_eq!(r.report.outcome, Outcome::Deployed),
            Some(why) => {
                assert_eq!(r.ended().0, Outcome::Failed);
                assert_eq!(r.report.reason, Some(Reason::NotApproved));
                assert!(r.message().contains(why), "{}", r.message());
                assert!(!r.calls.iter().any(|c| c.starts_with("start")), "{:?}", r.calls);
            }
        }
    }
}

#[tokio::test]
async fn an_activation_of_another_run_makes_the_host_busy() {
    let mut f = Fake::new();
    f.lock = Ok(vec!["other-run-activate.service".into()]);
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Busy), Some(Phase::Lock)));
    assert!(r.message().contains("other-run-activate.service"), "{}", r.message());
    assert!(!r.called("health") && !r.called("archive ."));
}

#[tokio::test]
async fn a_degraded_host_fails_preflight_naming_its_failed_units() {
    let mut f = Fake::new();
    f.health.push_back(health("degraded", &["lab-broken.service"]));
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Preflight), Some(Phase::Preflight)));
    assert_eq!(
        r.message(),
        "preflight: system is degraded (failed units: lab-broken.service); fix the host or pass --skip-preflight"
    );
    assert!(!r.called("archive ."));
}

#[tokio::test]
async fn skipping_preflight_skips_the_health_check_before_the_copy() {
    let r = drive(Fake::new(), |_, ctx| ctx.skip_preflight = true).await;
    assert_eq!(r.report.outcome, Outcome::Deployed);
    assert!(!r.phases().contains(&Phase::Preflight));
    assert_eq!(r.calls[..3], ["connect", "lock", "archive ."]);
}

#[tokio::test]
async fn copy_and_build_failures_stop_before_anything_changes() {
    let mut f = Fake::new();
    f.copy = Err(failed("nix flake archive", "cannot add path"));
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Copy), Some(Phase::Copy)));
    assert!(r.message().starts_with("copy: `nix flake archive` failed"), "{}", r.message());
    assert!(!r.called("build web1") && r.called("drop-root"));

    let mut f = Fake::new();
    f.build = Err(failed("nix build", "error: builder failed"));
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Build), Some(Phase::Build)));
    assert!(r.message().ends_with("error: builder failed"), "{}", r.message());

    let mut f = Fake::new();
    f.build = Err(timeout("nix build"));
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Timeout), Some(Phase::Build)));
    assert!(!r.called("start activate"));
}

#[tokio::test]
async fn a_result_that_is_not_a_nixos_system_is_refused() {
    let mut f = Fake::new();
    f.facts.as_mut().unwrap().switchable = false;
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::NotASystem), Some(Phase::Build)));
    assert!(r.message().contains("has no bin/switch-to-configuration"), "{}", r.message());
    assert!(!r.called("start activate"));
}

#[tokio::test]
async fn a_host_running_and_booting_the_system_is_up_to_date() {
    let mut f = Fake::new();
    f.facts = Ok(crate::agent::Facts {
        current: Some(NEW.into()),
        profile: Some(NEW.into()),
        boot_written: true,
        ..f.facts.unwrap()
    });
    let r = run(f).await;
    assert_eq!(r.report.outcome, Outcome::UpToDate);
    assert_eq!(r.report.system.as_deref(), Some(NEW));
    assert!(r.notes().contains(&"already running and booting this system"));
    assert!(!r.calls.iter().any(|c| c.starts_with("start")), "{:?}", r.calls);
}

#[tokio::test]
async fn force_activates_a_host_that_is_up_to_date() {
    let mut f = Fake::new();
    f.facts = Ok(crate::agent::Facts {
        current: Some(NEW.into()),
        profile: Some(NEW.into()),
        ..f.facts.unwrap()
    });
    let r = drive(f, |_, ctx| ctx.force = true).await;
    assert_eq!(r.report.outcome, Outcome::Deployed);
    assert!(r.called("start activate then-boot"));
}

#[tokio::test]
async fn a_host_running_the_system_without_its_boot_entry_gets_only_the_boot_entry() {
    let mut f = Fake::new();
    f.facts.as_mut().unwrap().current = Some(NEW.into());
    f.facts.as_mut().unwrap().confirmed = true;
    f.watch = [at(AgentState::Booted)].into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    assert_eq!((r.report.system.as_deref(), r.report.boot.as_deref()), (Some(NEW), Some(NEW)));
    assert!(r.notes().contains(&"already running this system, confirmed; writing its boot entry"));
    assert!(r.called("start boot") && !r.called("start activate"));
    assert!(!r.phases().contains(&Phase::Activate));
}

#[tokio::test]
async fn a_failing_self_check_stops_before_activation() {
    let mut f = Fake::new();
    f.facts.as_mut().unwrap().self_check = Some(format!("{NEW}/pre-activate-safety-checks"));
    f.self_check = Err(failed("pre-activate-safety-checks", "refusing to activate"));
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::SelfCheck), Some(Phase::SelfCheck)));
    assert!(r.message().starts_with("self-check failed, nothing activated"), "{}", r.message());
    assert!(r.message().ends_with("refusing to activate"), "{}", r.message());
    assert!(!r.called("start activate"));

    // A configured self-check the system does not have is a failure too.
    let r = drive(Fake::new(), |t, _| t.spec.self_check = Some("bin/check".into())).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::SelfCheck), Some(Phase::SelfCheck)));
    assert_eq!(r.message(), format!("self-check: bin/check is not an executable inside {NEW}"));
}

#[tokio::test]
async fn without_the_switch_check_the_self_check_runs_alone_and_still_stops() {
    let script = format!("{NEW}/pre-activate-safety-checks");
    let with_script = || {
        let mut f = Fake::new();
        f.facts.as_mut().unwrap().self_check = Some(script.clone());
        f
    };
    let no_check = crate::agent::SwitchEnv { no_check: true, install_bootloader: false };
    let r = drive(with_script(), |_, ctx| ctx.switch_env = no_check).await;
    assert_eq!(r.report.outcome, Outcome::Deployed);
    assert!(r.called(&format!("self-check {script}")), "{:?}", r.calls);
    assert!(!r.called("pre-switch-check"), "{:?}", r.calls);
    // --goal boot checks no live switch either; a failing self-check stops it.
    let mut f = with_script();
    f.self_check = Err(failed("pre-activate-safety-checks", "refusing to activate"));
    let r = drive(f, |_, ctx| ctx.goal = Goal::Boot).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::SelfCheck), Some(Phase::SelfCheck)));
    assert!(!r.called("pre-switch-check") && !r.called("start boot"), "{:?}", r.calls);
}

#[tokio::test]
async fn an_interrupted_run_stops_before_activation() {
    let r = drive(Fake::new(), |_, ctx| {
        let (raise, interrupt) = super::Interrupt::new();
        raise.raise();
        ctx.interrupt = interrupt
    })
    .await;
    assert_eq!(r.report.outcome, Outcome::Cancelled);
    assert_eq!(r.report.reason, Some(Reason::Cancelled));
    assert!(!r.called("start activate") && r.called("drop-root"));
}

#[tokio::test]
async fn every_end_state_of_the_activation_agent() {
    use AgentState::*;
    let table = [
        (
            status(
                RolledBack,
                Some(Reason::ActivationFailed),
                "switch-to-configuration test exited with 4 (a unit failed)",
            ),
            Outcome::RolledBack,
            Reason::ActivationFailed,
            "rolled back: switch-to-configuration test exited with 4 (a unit failed)",
        ),
        (
            status(RolledBack, Some(Reason::Timeout), "activation did not finish within 5s"),
            Outcome::RolledBack,
            Reason::Timeout,
            "rolled back: activation",
        ),
        (
            status(
                RollbackFailed,
                Some(Reason::ActivationFailed),
                "x; re-activating exited with 1",
            ),
            Outcome::Unknown,
            Reason::RollbackFailed,
            "ROLLBACK FAILED: x; re-activating",
        ),
        (
            status(Failed, Some(Reason::ActivationFailed), "exited with 1"),
            Outcome::Unconfirmed,
            Reason::ActivationFailed,
            "magicRollback is off: the host runs the new system",
        ),
        (
            status(Other("exploded".into()), None, "into thin air"),
            Outcome::Unknown,
            Reason::Internal,
            "unexpected state `exploded into thin air`",
        ),
    ];
    for (answer, outcome, reason, msg) in table {
        let line = format!("{answer:?}");
        let mut f = Fake::new();
        f.watch = [answer].into();
        let r = run(f).await;
        assert_eq!(r.ended(), (outcome, Some(reason), Some(Phase::Activate)), "{line}");
        assert!(r.message().contains(msg), "{line}: {}", r.message());
        assert!(!r.called("confirm") && !r.called("start boot"), "{line}");
        let rolled_back = outcome == Outcome::RolledBack;
        assert_eq!(r.rolled_back(), rolled_back.then_some(Some(reason)), "{line}");
        let runs = match outcome {
            Outcome::RolledBack => Some(OLD),
            Outcome::Unconfirmed => Some(NEW),
            _ => None,
        };
        assert_eq!(r.report.system.as_deref(), runs, "{line}");
        // The boot entry was never touched.
        let boots = (outcome != Outcome::Unknown).then_some(OLD);
        assert_eq!(r.report.boot.as_deref(), boots, "{line}");
    }
}

#[tokio::test]
async fn a_failing_health_check_is_not_confirmed_and_the_agent_rolls_back() {
    let mut f = Fake::new();
    f.checks.push_back(Err("health check `curl` still failing after 3 s: HTTP 503".into()));
    f.watch = [
        at(AgentState::AwaitingConfirmation),
        status(AgentState::RolledBack, Some(Reason::HealthCheck), "not confirmed: HTTP 503"),
    ]
    .into();
    let r = drive(f, |t, _| {
        t.spec.health_checks.push(HealthCheck {
            description: "curl".into(),
            probe: crate::fleet::Probe::Command(vec!["curl".into()]),
            period: 1,
            timeout: 3,
        })
    })
    .await;
    assert_eq!(r.ended(), (Outcome::RolledBack, Some(Reason::HealthCheck), Some(Phase::Confirm)));
    assert!(r.called("abort health-check") && !r.called("confirm"));
    assert_eq!(r.rolled_back(), Some(Some(Reason::HealthCheck)));
    assert!(r.notes().iter().any(|n| n.starts_with("not confirming: health check `curl`")));
}

#[tokio::test]
async fn a_unit_failing_after_activation_is_not_confirmed() {
    let mut f = Fake::new();
    f.health = [health("running", &[]), health("degraded", &["demo.service"])].into();
    f.watch = [
        at(AgentState::AwaitingConfirmation),
        status(AgentState::RolledBack, Some(Reason::HealthCheck), "not confirmed"),
    ]
    .into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::RolledBack, Some(Reason::HealthCheck), Some(Phase::Confirm)));
    assert!(r.called("abort health-check") && !r.called("confirm"));
    assert!(r.notes().iter().any(|n| n.contains("failed units: demo.service")), "{:?}", r.notes());
    // The lock answered the preflight's health, the watch that saw the
    // activation end the one before the confirmation: no `health` call.
    assert!(!r.called("health"), "{:?}", r.calls);
    assert!(r.called("watch - health"), "{:?}", r.calls);
}

#[tokio::test]
async fn a_health_the_watch_could_not_answer_is_asked_for_on_its_own() {
    let mut f = Fake::new();
    let lost = Err(failed("agent health", "systemctl: connection reset"));
    f.health = [health("running", &[]), lost].into();
    f.watch = [
        at(AgentState::AwaitingConfirmation),
        status(AgentState::RolledBack, Some(Reason::HealthCheck), "not confirmed"),
    ]
    .into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::RolledBack, Some(Reason::HealthCheck), Some(Phase::Confirm)));
    let i = r.calls.iter().position(|c| c == "watch - health").unwrap();
    assert_eq!(r.calls[i + 1..=i + 2], ["health", "abort health-check"], "{:?}", r.calls);
    assert!(!r.called("confirm"));
}

#[tokio::test]
async fn a_failed_fresh_login_is_not_confirmed() {
    let mut f = Fake::new();
    f.confirm = Err(failed("touch", "Connection refused"));
    f.watch = [
        at(AgentState::AwaitingConfirmation),
        status(AgentState::RolledBack, Some(Reason::NotConfirmed), "not confirmed: fresh login"),
    ]
    .into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::RolledBack, Some(Reason::NotConfirmed), Some(Phase::Confirm)));
    assert!(r.called("confirm") && r.called("abort not-confirmed"));
    assert!(!r.calls.iter().any(|c| c.starts_with("start boot")));
}

#[tokio::test(start_paused = true)]
async fn an_activation_outliving_its_timeout_is_aborted_and_rolled_back() {
    let mut f = Fake::new();
    f.watch = [
        Err(timeout("agent watch")),
        status(AgentState::RolledBack, Some(Reason::Timeout), "activation aborted by the deployer"),
    ]
    .into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::RolledBack, Some(Reason::Timeout), Some(Phase::Activate)));
    let i = r.calls.iter().position(|c| c == "abort timeout").expect("abort sent");
    assert_eq!(r.calls[i + 1], "watch - health", "the deployer waits for the rollback");
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_is_regained_and_the_deploy_completes() {
    let mut f = Fake::new();
    f.watch.push_front(Err(disconnected()));
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    assert!(r.notes().contains(&"reconnected; re-attaching to the activation"), "{:?}", r.notes());
    let i = r.calls.iter().position(|c| c == "reconnect").unwrap();
    assert_eq!(r.calls[i - 1..=i + 1], ["is-alive", "reconnect", "watch - health"]);
}

#[tokio::test(start_paused = true)]
async fn a_connection_lost_for_good_leaves_the_host_to_its_agent() {
    let mut f = Fake::new();
    f.watch = [Err(disconnected())].into();
    f.reconnect = Err(SshError::ConnectTimeout { dest: "root@web1:22".into(), secs: 10 }.into());
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Unknown, Some(Reason::Lost), Some(Phase::Activate)));
    assert!(r.message().contains("the host confirms or rolls back by itself"), "{}", r.message());
    assert!(!r.called("confirm"));
}

#[tokio::test]
async fn a_failed_boot_entry_leaves_the_new_system_running_and_says_so() {
    let mut f = Fake::new();
    f.watch = [
        at(AgentState::AwaitingConfirmation),
        at(AgentState::Confirmed),
        status(AgentState::BootFailed, Some(Reason::BootEntry), "exited with 1"),
    ]
    .into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Unknown, Some(Reason::BootEntry), Some(Phase::Boot)));
    assert_eq!(r.report.system.as_deref(), Some(NEW));
    let msg =
        format!("the new system {NEW} runs, but its boot entry was not written: exited with 1");
    assert!(r.message().starts_with(&msg), "{}", r.message());

    // The agent goes on to the boot entry once confirmed: the watch that
    // waits for the confirmation may see the boot step's end already.
    let mut f = Fake::new();
    f.watch = [
        at(AgentState::AwaitingConfirmation),
        status(AgentState::BootFailed, Some(Reason::BootEntry), "exited with 1"),
    ]
    .into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Unknown, Some(Reason::BootEntry), Some(Phase::Boot)));
    assert!(r.message().starts_with(&msg), "{}", r.message());
    assert!(!r.called("start boot"), "{:?}", r.calls);
}

#[tokio::test]
async fn a_watch_that_sees_the_boot_entry_written_ends_deployed() {
    let mut f = Fake::new();
    f.watch = [at(AgentState::AwaitingConfirmation), at(AgentState::Booted)].into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    assert_eq!((r.report.system.as_deref(), r.report.boot.as_deref()), (Some(NEW), Some(NEW)));
    assert_eq!(r.phases(), switch_phases());
    assert_eq!(r.calls.iter().filter(|c| c.starts_with("watch")).count(), 2, "{:?}", r.calls);

    // Not with --goal test: there, booted is not what was asked for (the
    // agent was told to write no boot entry), so what the host is in is
    // not known.
    let mut f = Fake::new();
    f.watch = [at(AgentState::AwaitingConfirmation), at(AgentState::Booted)].into();
    let r = drive(f, |_, ctx| ctx.goal = Goal::Test).await;
    assert_eq!(r.ended(), (Outcome::Unknown, Some(Reason::Internal), Some(Phase::Confirm)));
    assert!(
        r.message().starts_with("the agent ended in an unexpected state `booted"),
        "{}",
        r.message()
    );
}

#[tokio::test]
async fn an_agent_that_cannot_start_changes_nothing() {
    let mut f = Fake::new();
    f.start = [Err(failed("systemd-run", "Failed to start transient service"))].into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::ActivationFailed), Some(Phase::Activate)));
    assert!(!r.calls.iter().any(|c| c.starts_with("watch")));
    assert!(r.called("drop-root"));
}

#[tokio::test]
async fn a_rollback_returns_to_a_generation_without_copy_build_or_self_check() {
    let mut f = Fake::new();
    f.facts = Ok(crate::agent::Facts {
        current: Some(NEW.into()),
        profile: Some(NEW.into()),
        ..f.facts.unwrap()
    });
    f.facts.as_mut().unwrap().self_check = Some("x".into());
    f.generation = Ok((41, path(OLD)));
    let r = drive(f, |_, ctx| ctx.mode = Mode::Rollback { to_generation: Some(41) }).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    assert_eq!(r.report.system.as_deref(), Some(OLD));
    assert!(r.called("generation Some(41)") && r.called("start activate then-boot"));
    assert!(!r
        .calls
        .iter()
        .any(|c| c.starts_with("copy") || c.starts_with("build") || c.starts_with("self-check")));
    // The generation returned to is checked like any new system: its
    // pre-switch checks and inhibitors must allow the live switch.
    assert!(r.called("pre-switch-check"));
}

#[test]
fn host_errors_map_to_reasons_whatever_the_phase() {
    let e: HostError = timeout("x");
    assert_eq!(e.reason(Reason::Copy), Reason::Timeout);
    assert_eq!(disconnected().reason(Reason::Build), Reason::Unreachable);
    assert_eq!(failed("x", "y").reason(Reason::Build), Reason::Build);
    let e: HostError = SshError::SshOpts("`-p`: set sshPort instead".into()).into();
    assert_eq!(e.reason(Reason::Unreachable), Reason::SshConfig);
    let sudo =
        crate::process::ProcessError::NeedsPassword { sudo: "sudo -n".into(), user: "u".into() };
    assert_eq!(HostError::from(sudo).reason(Reason::Preflight), Reason::Auth);
    let _ = fake::OLD;
}

#[tokio::test(start_paused = true)]
async fn a_confirmation_whose_answer_is_lost_is_followed_not_taken_back() {
    let mut f = Fake::new();
    // The fresh login confirmed, then lost the agent's answer.
    f.watch = [
        at(AgentState::AwaitingConfirmation),
        Err(disconnected()),
        at(AgentState::Confirmed),
        at(AgentState::Booted),
    ]
    .into();
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    assert!(!r.called("abort"), "{:?}", r.calls);
    let i = r.calls.iter().position(|c| c == "confirm").unwrap();
    let after = [
        "watch awaiting-confirmation",
        "is-alive",
        "reconnect",
        "watch awaiting-confirmation",
        "watch confirmed",
    ];
    assert_eq!(r.calls[i + 1..i + 6], after, "{:?}", r.calls);
}
