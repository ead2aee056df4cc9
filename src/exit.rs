//! Exit codes: the one table that says what the process status means.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | every selected host succeeded (or was already up to date) |
//! | 1 | some host failed, but every host is in a known state (unchanged, rolled back, superseded by another switch, activated without confirmation, or deployed and then failed its reboot or soak: the report says what it runs and boots), or a deployed host went unchecked (its soak interrupted) |
//! | 2 | usage, inventory or evaluation error: no host was touched |
//! | 3 | a host may be in an unknown state (rollback failed, or lost mid-activation) |

use std::process::ExitCode;

use crate::events::{HostReport, Outcome};

/// The outcome of a whole run, as the process reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    Success = 0,
    HostsFailed = 1,
    Usage = 2,
    UnknownState = 3,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// The exit status of a run: the worst host decides.
pub fn exit_for(reports: &[HostReport]) -> Exit {
    let mut exit = Exit::Success;
    for r in reports {
        let e = match r.outcome {
            Outcome::Deployed | Outcome::UpToDate => Exit::Success,
            Outcome::Failed
            | Outcome::RolledBack
            | Outcome::Unconfirmed
            | Outcome::Superseded
            | Outcome::Cancelled
            | Outcome::Skipped
            | Outcome::Unchecked
            // Known: the report says what it runs and boots.
            | Outcome::DeployedThenFailed => Exit::HostsFailed,
            Outcome::Unknown => Exit::UnknownState,
        };
        if e == Exit::UnknownState || (e == Exit::HostsFailed && exit == Exit::Success) {
            exit = e;
        }
    }
    exit
}
