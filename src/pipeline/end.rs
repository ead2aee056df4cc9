//! How a host run ends, and the pure decisions that lead there: what to do
//! with a host that already runs the system, and what an agent's final
//! state means for the host.

use crate::agent::{AgentState, AgentStatus, Facts};
use crate::events::{Outcome, Reason};
use crate::nix::StorePath;

/// How a host run ended, before it becomes a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub outcome: Outcome,
    pub reason: Option<Reason>,
    pub system: Option<String>,
    pub message: Option<String>,
}

impl End {
    pub fn ok(outcome: Outcome, system: &StorePath) -> End {
        End { outcome, reason: None, system: Some(system.to_string()), message: None }
    }

    /// Stopped before anything on the host changed.
    pub fn unchanged(reason: Reason, msg: impl Into<String>) -> End {
        End {
            outcome: Outcome::Failed,
            reason: Some(reason),
            system: None,
            message: Some(msg.into()),
        }
    }

    /// The host may be in an unknown state; the message says what to inspect.
    pub fn unknown(reason: Reason, msg: impl Into<String>) -> End {
        End {
            outcome: Outcome::Unknown,
            reason: Some(reason),
            system: None,
            message: Some(msg.into()),
        }
    }
}

/// What to do with a host, given what it runs and boots now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// It runs and boots the system: nothing to do.
    UpToDate,
    /// It runs the system, but its boot entry was never written.
    FinishBoot,
    /// Activate the system.
    Activate,
}

/// Pure: the step after the facts are known.
pub fn next_step(facts: &Facts, toplevel: &StorePath, force: bool) -> Next {
    let running = facts.current.as_deref() == Some(toplevel.as_str());
    let booting = facts.profile.as_deref() == Some(toplevel.as_str());
    match (running && !force, booting) {
        (true, true) => Next::UpToDate,
        (true, false) => Next::FinishBoot,
        (false, _) => Next::Activate,
    }
}

/// What an agent that ended without a confirmation means for the host.
/// `inspect` says where to look on the host. Pure.
pub fn agent_end(s: &AgentStatus, inspect: &str) -> End {
    let cause = s.cause;
    match &s.state {
        AgentState::RolledBack => End {
            outcome: Outcome::RolledBack,
            reason: Some(cause.unwrap_or(Reason::ActivationFailed)),
            // Rolled back: the host runs what it ran before.
            system: s.previous.clone(),
            message: Some(format!("rolled back: {}", s.reason)),
        },
        AgentState::Failed => End::unchanged(
            cause.unwrap_or(Reason::ActivationFailed),
            format!(
                "activation failed and magicRollback is off, so the host runs the new system \
                 unconfirmed; its boot entry is unchanged: {}",
                s.reason
            ),
        ),
        AgentState::RollbackFailed => End::unknown(
            Reason::RollbackFailed,
            format!("ROLLBACK FAILED: {}; inspect {inspect}", s.reason),
        ),
        AgentState::BootFailed => End::unknown(
            Reason::BootEntry,
            format!("writing the boot entry failed: {}; inspect {inspect}", s.reason),
        ),
        other => End::unknown(
            Reason::Internal,
            format!(
                "the agent ended in an unexpected state `{} {}`; inspect {inspect}",
                other.as_str(),
                s.reason
            ),
        ),
    }
}
