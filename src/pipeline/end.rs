//! How a host run ends, and the pure decisions that lead there: what to do
//! with a host given what it runs and boots, and what an agent's final
//! state means for the host.

use super::Goal;
use crate::agent::{AgentState, AgentStatus, Facts};
use crate::events::{Outcome, Reason};
use crate::nix::StorePath;

/// How a host run ended, before it becomes a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub outcome: Outcome,
    pub reason: Option<Reason>,
    /// What the host runs at the end (`None`: as before the run, or unknown).
    pub system: Option<String>,
    /// What it boots at the end (`None`: as before the run, or unknown).
    pub boot: Option<String>,
    pub needs_reboot: Option<Vec<String>>,
    pub message: Option<String>,
}

impl End {
    fn new(outcome: Outcome, reason: Option<Reason>, message: Option<String>) -> End {
        End { outcome, reason, system: None, boot: None, needs_reboot: None, message }
    }

    /// Deployed or up to date: what the host runs and boots, where the run
    /// knows it (the rest is filled in by [`End::complete`]).
    pub fn reached(outcome: Outcome, runs: Option<&StorePath>, boots: Option<&StorePath>) -> End {
        End {
            system: runs.map(|p| p.to_string()),
            boot: boots.map(|p| p.to_string()),
            ..End::new(outcome, None, None)
        }
    }

    /// Stopped before the run changed anything on the host.
    pub fn unchanged(reason: Reason, msg: impl Into<String>) -> End {
        End::new(Outcome::Failed, Some(reason), Some(msg.into()))
    }

    /// Failed after the run changed the host (after `--reboot`: it did
    /// not reboot, came back in another system, or came back unhealthy):
    /// `system` and `boot` must say what it runs and boots.
    pub fn deployed_then_failed(
        reason: Reason,
        msg: impl Into<String>,
        system: Option<String>,
        boot: Option<String>,
    ) -> End {
        let outcome = Outcome::DeployedThenFailed;
        End { system, boot, ..End::new(outcome, Some(reason), Some(msg.into())) }
    }

    /// The host may be in an unknown state; the message says what to inspect.
    pub fn unknown(reason: Reason, msg: impl Into<String>) -> End {
        End::new(Outcome::Unknown, Some(reason), Some(msg.into()))
    }

    /// Fill in what the host runs and boots where the end does not say
    /// (it is what it was before: `facts`), and what a reboot would bring
    /// in for what it boots. `toplevel`: the run's system.
    pub fn complete(&mut self, facts: Option<&Facts>, toplevel: Option<&StorePath>) {
        let Some(f) = facts else { return };
        if self.outcome == Outcome::Unknown {
            return;
        }
        self.system = self.system.take().or_else(|| f.current.clone());
        self.boot = self.boot.take().or_else(|| f.boots().map(String::from));
        self.needs_reboot = match (self.boot.as_deref(), toplevel) {
            (Some(b), Some(t)) if b == t.as_str() => f.reboot_new.clone(),
            (b, _) if b == f.profile.as_deref() => f.reboot_profile.clone(),
            _ => None,
        };
    }
}

/// What to do with a host, given what it runs and boots now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing: it is where the goal wants it.
    UpToDate,
    /// It runs the system, confirmed here before, but its boot entry was
    /// never written: write it.
    FinishBoot,
    /// Activate the system (test, confirm, and the boot entry for `switch`).
    Activate,
    /// `--goal boot`: write the boot entry only.
    BootOnly,
}

/// Pure: the step after the facts are known. A boot entry is only ever
/// written for a system confirmed on this host (or on request, with
/// `--goal boot`), and a host is only "up to date" once the boot entry of
/// its system was written and the next boot comes up in it (an older
/// generation that points at it, or a default entry that names another
/// system, is not its boot entry).
pub fn next_step(facts: &Facts, toplevel: &StorePath, goal: Goal, force: bool) -> Next {
    let running = facts.current.as_deref() == Some(toplevel.as_str()) && !force;
    let booting = facts.boots_into(toplevel.as_str()) && facts.boot_written;
    match goal {
        Goal::Switch if running && booting => Next::UpToDate,
        Goal::Switch if running && facts.confirmed => Next::FinishBoot,
        Goal::Switch | Goal::Test => {
            if goal == Goal::Test && running && facts.confirmed {
                Next::UpToDate
            } else {
                Next::Activate
            }
        }
        Goal::Boot if booting && !force => Next::UpToDate,
        Goal::Boot => Next::BootOnly,
    }
}

/// What an agent that ended without success means for the host.
/// `toplevel`: the system of the run; `runs`: what the host runs when the
/// run activated nothing (`--goal boot`; `None`: the run's system runs);
/// `inspect`: where to look. Pure.
pub fn agent_end(s: &AgentStatus, toplevel: &StorePath, runs: Option<&str>, inspect: &str) -> End {
    let cause = s.cause;
    let reason = &s.reason;
    match &s.state {
        AgentState::RolledBack => End {
            // Rolled back: the host runs what it ran before.
            system: s.previous.clone(),
            ..End::new(
                Outcome::RolledBack,
                Some(cause.unwrap_or(Reason::ActivationFailed)),
                Some(format!("rolled back: {reason}")),
            )
        },
        AgentState::Refused => refused(cause, reason),
        AgentState::Failed => End {
            system: Some(toplevel.to_string()),
            ..End::new(
                Outcome::Unconfirmed,
                Some(cause.unwrap_or(Reason::ActivationFailed)),
                Some(format!(
                    "activation failed and magicRollback is off: the host runs the new system \
                     {toplevel}, unconfirmed, and still boots the previous one: {reason}"
                )),
            )
        },
        AgentState::RollbackFailed => End::unknown(
            Reason::RollbackFailed,
            format!("ROLLBACK FAILED: {reason}; inspect {inspect}"),
        ),
        AgentState::BootFailed => boot_failed(toplevel, runs, cause, reason, inspect),
        AgentState::Superseded => End {
            // What runs now is what the other switch left (read again).
            system: None,
            ..End::new(
                Outcome::Superseded,
                Some(cause.unwrap_or(Reason::Superseded)),
                Some(format!("superseded: {reason}")),
            )
        },
        AgentState::Vanished => End::unknown(
            cause.unwrap_or(Reason::Lost),
            format!(
                "{reason}; the run's state on the host is gone — inspect what it runs: {inspect}"
            ),
        ),
        other => End::unknown(
            Reason::Internal,
            format!(
                "the agent ended in an unexpected state `{} {reason}`; inspect {inspect}",
                other.as_str()
            ),
        ),
    }
}

/// The agent refused before changing anything: the way out depends on why.
fn refused(cause: Option<Reason>, reason: &str) -> End {
    let why = cause.unwrap_or(Reason::ActivationFailed);
    let way_out = match why {
        // The report says what the host runs now.
        Reason::LockLost | Reason::Keys => "",
        Reason::RebootRequired => {
            "; deploy it with --goal boot --reboot always (its boot entry is written, the \
                 host reboots into it and is checked), or with --goal boot and reboot the host \
                 yourself"
        }
        _ => "; retry after the other switch ends",
    };
    End::unchanged(why, format!("{reason}{way_out}"))
}

/// The boot step failed: what runs, and what to do.
fn boot_failed(
    toplevel: &StorePath,
    runs: Option<&str>,
    cause: Option<Reason>,
    reason: &str,
    inspect: &str,
) -> End {
    let message = match runs {
        None => format!(
            "the new system {toplevel} runs, but its boot entry was not written: {reason}; \
             re-run deploy-flake to finish the boot step (inspect {inspect})"
        ),
        Some(runs) => format!(
            "the boot entry of {toplevel} was not written: {reason}; the host runs {runs}, as \
             before (inspect {inspect})"
        ),
    };
    End {
        system: Some(runs.unwrap_or(toplevel.as_str()).to_string()).filter(|r| r.starts_with('/')),
        ..End::unknown(cause.unwrap_or(Reason::BootEntry), message)
    }
}
