//! The report stays true when the run's hold on a host breaks, against
//! the fake host: a host lock lost before the host changes (taken back
//! only when nobody else held it and the host is as the run found it), an
//! agent that refuses for the same reason, a lock lost while the agent is
//! followed, a switch by someone else during the confirmation window, a
//! lock that cannot be taken, and the agent's numbers from the budget.

use std::collections::VecDeque;

use super::fake::{at, drive, run, status, Fake, OLD};
use super::Goal;
use crate::agent::{AgentAction, AgentState, Facts, LockError};
use crate::events::{Outcome, Phase, Reason};
use crate::host::{HostError, Locked};

/// What a third party (another deploy, an administrator) left running and booting.
const OTHER: &str = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-other";

fn runs(system: &str) -> Facts {
    Facts {
        current: Some(system.into()),
        profile: Some(system.into()),
        switchable: true,
        systemd: true,
        ..Facts::default()
    }
}

/// A fake host whose lock is lost by the time the run would change it.
fn lost() -> Fake {
    let mut f = Fake::new();
    f.lock_lost = Some((1, "no heartbeat reached the host for 30 s".into()));
    f
}

fn unchanged_lock_lost(r: &super::fake::Ran, phase: Phase) {
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::LockLost), Some(phase)), "{r:?}");
    assert!(r.message().starts_with("lost the host lock (no heartbeat"), "{}", r.message());
    assert!(r.message().ends_with("nothing changed"), "{}", r.message());
    assert!(r.actions.is_empty(), "no agent started: {:?}", r.calls);
}

impl std::fmt::Debug for super::fake::Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {:?}", self.report, self.calls)
    }
}

#[tokio::test]
async fn a_lock_lost_on_a_host_nobody_touched_is_taken_back_and_the_run_goes_on() {
    let r = run(lost()).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    let at = r.calls.iter().position(|c| c == "lock-lost").expect("asked");
    assert_eq!(r.calls[at..at + 4], ["lock-lost", "relock", "facts", "start activate then-boot"]);
    let note = r.notes().into_iter().find(|n| n.starts_with("lost the host lock")).unwrap();
    assert!(note.ends_with("took it back: the host runs and boots what it did"), "{note}");
}

#[tokio::test]
async fn a_lock_another_run_held_meanwhile_ends_the_run_unchanged() {
    let mut f = lost();
    f.relock = VecDeque::from([Ok(Locked { held_meanwhile: true, ..Locked::default() })]);
    f.later_facts = VecDeque::from([Ok(runs(OTHER))]);
    let r = run(f).await;
    unchanged_lock_lost(&r, Phase::Activate);
    assert!(r.message().contains("another deploy held it meanwhile"), "{}", r.message());
    // The report says what the host runs now, not what it ran before.
    assert_eq!(r.report.system.as_deref(), Some(OTHER));
    assert_eq!(r.report.boot.as_deref(), Some(OTHER));
}

#[tokio::test]
async fn a_lock_another_run_holds_now_ends_the_run_unchanged() {
    let mut f = lost();
    let holder = "run 9 by ops@elsewhere";
    f.relock = VecDeque::from([Err(HostError::Lock(LockError::Held {
        holder: holder.into(),
        run: None,
    }))]);
    f.later_facts = VecDeque::from([Ok(runs(OTHER))]);
    let r = run(f).await;
    unchanged_lock_lost(&r, Phase::Activate);
    assert!(r.message().contains(&format!("another deploy holds it now: {holder}")));
    assert_eq!(r.report.system.as_deref(), Some(OTHER));
}

#[tokio::test]
async fn a_lock_taken_back_on_a_changed_host_ends_the_run_unchanged() {
    let mut f = lost();
    f.later_facts = VecDeque::from([Ok(runs(OTHER))]);
    let r = run(f).await;
    unchanged_lock_lost(&r, Phase::Activate);
    let said = format!("another deploy changed the host meanwhile: it runs {OTHER}");
    assert!(r.message().contains(&said), "{}", r.message());
    assert_eq!(r.report.system.as_deref(), Some(OTHER));
}

#[tokio::test]
async fn a_lock_taken_back_while_another_switch_runs_ends_the_run_unchanged() {
    let mut f = lost();
    let busy = vec!["nixos-upgrade.service".to_string()];
    f.relock = VecDeque::from([Ok(Locked { busy, ..Locked::default() })]);
    let r = run(f).await;
    unchanged_lock_lost(&r, Phase::Activate);
    assert!(r.message().contains("nixos-upgrade.service"), "{}", r.message());
}

#[tokio::test]
async fn a_boot_entry_is_not_written_under_a_lost_lock_either() {
    let mut f = lost();
    let holder = "run 9 by ops@elsewhere";
    f.relock = VecDeque::from([Err(HostError::Lock(LockError::Held {
        holder: holder.into(),
        run: None,
    }))]);
    let r = drive(f, |_, ctx| ctx.goal = Goal::Boot).await;
    unchanged_lock_lost(&r, Phase::Boot);
}

#[tokio::test]
async fn an_agent_that_refuses_for_a_lost_lock_is_reported_with_what_the_host_runs() {
    let mut f = Fake::new();
    let why = "this run lost the host lock (its deployer was silent for longer than the lock \
               holder waits); nothing was changed";
    f.watch = VecDeque::from([status(AgentState::Refused, Some(Reason::LockLost), why)]);
    f.later_facts = VecDeque::from([Ok(runs(OTHER))]);
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::LockLost), Some(Phase::Activate)));
    assert_eq!(r.message(), why);
    assert_eq!(r.report.system.as_deref(), Some(OTHER));
    assert_eq!(r.rolled_back(), None);
}

#[tokio::test]
async fn a_lock_lost_while_the_agent_is_followed_is_taken_back() {
    let mut f = Fake::new();
    // The first question is the one before the activation.
    f.lock_lost = Some((2, "its holder on the host ended (signal 9)".into()));
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    let relock = r.calls.iter().position(|c| c == "relock").expect("taken back");
    assert_eq!(r.calls[relock + 1], "watch confirmed");
    assert!(r
        .notes()
        .contains(&"lost the host lock (its holder on the host ended (signal 9)); took it back"));
}

#[tokio::test]
async fn a_switch_by_someone_else_before_the_confirmation_is_recorded_is_superseded() {
    let mut f = Fake::new();
    let why = format!(
        "another switch replaced the run's system before the confirmation was recorded: the host \
         runs {OLD}; no boot entry was written"
    );
    f.watch = VecDeque::from([
        at(AgentState::AwaitingConfirmation),
        status(AgentState::Superseded, Some(Reason::Superseded), &why),
    ]);
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Superseded, Some(Reason::Superseded), Some(Phase::Confirm)));
    assert_eq!(r.message(), format!("superseded: {why}"));
    assert_eq!((r.report.system.as_deref(), r.report.boot.as_deref()), (Some(OLD), Some(OLD)));
    assert!(r.called("facts"), "what it runs is read again: {:?}", r.calls);
    assert_eq!(r.rolled_back(), None);
    let exit = crate::exit::exit_for(std::slice::from_ref(&r.report));
    assert_eq!(exit, crate::exit::Exit::HostsFailed);
}

#[tokio::test]
async fn a_switch_by_someone_else_before_the_boot_entry_is_superseded() {
    let mut f = Fake::new();
    let why = format!("another switch replaced the run's system before its boot entry was written: the host runs {OTHER}; no boot entry was written");
    f.watch = VecDeque::from([
        at(AgentState::AwaitingConfirmation),
        at(AgentState::Confirmed),
        status(AgentState::Superseded, Some(Reason::Superseded), &why),
    ]);
    f.later_facts = VecDeque::from([Ok(Facts { profile: Some(OLD.into()), ..runs(OTHER) })]);
    let r = run(f).await;
    assert_eq!(r.ended(), (Outcome::Superseded, Some(Reason::Superseded), Some(Phase::Boot)));
    assert_eq!((r.report.system.as_deref(), r.report.boot.as_deref()), (Some(OTHER), Some(OLD)));
}

#[tokio::test]
async fn a_lock_that_cannot_be_taken_names_why() {
    let said = "head: error writing 'standard output': No space left on device";
    let cases = [
        (LockError::Failed { said: said.into() }, Reason::LockFailed, said),
        (LockError::NoFlock, Reason::NotASystem, "the target has no `flock`"),
    ];
    for (e, reason, text) in cases {
        let mut f = Fake::new();
        f.lock = Err(e.into());
        let r = run(f).await;
        assert_eq!(r.ended(), (Outcome::Failed, Some(reason), Some(Phase::Lock)));
        assert!(r.message().contains(text), "{}", r.message());
    }
}

fn activation(r: &super::fake::Ran) -> (u64, u64, u64, u64) {
    match &r.actions[..] {
        [AgentAction::Activate { activate_secs, window_secs, hard_secs, rollback_secs, .. }] => {
            (*activate_secs, *window_secs, *hard_secs, *rollback_secs)
        }
        other => panic!("one activation: {other:?}"),
    }
}

#[tokio::test]
async fn the_agent_is_given_the_numbers_of_the_budget() {
    let r = run(Fake::new()).await;
    assert_eq!(activation(&r), (600, 30, 630, 600));
    assert!(!r.notes().iter().any(|n| n.starts_with("timeouts.confirm")));
    // A short activate timeout still leaves a rollback 300 s.
    let r = drive(Fake::new(), |t, _| t.spec.timeouts.activate = 20).await;
    assert_eq!(activation(&r), (20, 30, 630, 300));
}

#[tokio::test]
async fn a_window_shorter_than_two_heartbeats_and_slack_is_raised_and_said() {
    let r = drive(Fake::new(), |t, _| t.spec.timeouts.confirm = 3).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    assert_eq!(activation(&r), (600, 15, 615, 600));
    let note = r.notes().into_iter().find(|n| n.starts_with("timeouts.confirm")).unwrap();
    assert!(note.contains("gives the host 3 s") && note.ends_with("it waits 15 s"), "{note}");
}
