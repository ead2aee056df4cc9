//! Getting a host the system of its configuration, the one sequence a
//! deploy and `diff` share ([`super::Host::system`]): copy the flake to the
//! host and build it there, or get the system from elsewhere (built here,
//! on the build host, or before) and bring its closure to the host. Each
//! step is said as it starts, so that a caller can show its phases.

use crate::agent::Facts;
use crate::build::{BuildError, BuiltOn, CopiedFrom};
use crate::events::{Phase, Reason};
use crate::nix::StorePath;

use super::HostError;

/// A step of getting a host its system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Copying: the flake to the host, or the built system's closure.
    Copy,
    /// Building the system (or finding the one built before).
    Build,
}

impl Step {
    /// The phase of a deploy the step is.
    pub fn phase(self) -> Phase {
        match self {
            Step::Copy => Phase::Copy,
            Step::Build => Phase::Build,
        }
    }

    /// Its name in a message.
    pub fn name(self) -> &'static str {
        match self {
            Step::Copy => "copy",
            Step::Build => "build",
        }
    }

    /// The reason of a host that failed in it.
    pub fn reason(self) -> Reason {
        match self {
            Step::Copy => Reason::Copy,
            Step::Build => Reason::Build,
        }
    }
}

/// What getting a host its system says as it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'l> {
    /// Where the system is built: said before anything is done.
    BuiltOn(BuiltOn),
    /// A step starts (there is no build step for a system built before).
    Starts(Step),
    /// A line printed by the step going on.
    Line(&'l str),
}

/// What to say progress to.
pub type OnProgress<'a> = &'a mut (dyn FnMut(Progress<'_>) + Send);

/// The system a host got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct System {
    pub path: StorePath,
    /// The host's facts, when they came with a build on the host.
    pub facts: Option<Facts>,
    /// Where its closure came from, when it was built elsewhere.
    pub copied_from: Option<CopiedFrom>,
}

/// Why a host did not get its system.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemError {
    /// Its record names no way to it (nothing was done).
    #[error(transparent)]
    Way(BuildError),
    /// A step failed.
    #[error("{1}")]
    Failed(Step, HostError),
}

impl From<SystemError> for HostError {
    fn from(e: SystemError) -> HostError {
        match e {
            SystemError::Way(e) => HostError::Elsewhere(e),
            SystemError::Failed(_, e) => e,
        }
    }
}
