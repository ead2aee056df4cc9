//! What the command line asks for ([`Intent`]): a deploy (or a rollback)
//! with the options only a deploy takes, a diff, a status or the keys —
//! one value, so that no combination of flags the commands do not take
//! can be represented.

use crate::agent::SwitchEnv;
use crate::pipeline::{Goal, Mode, Reboot};
use crate::rollout::Overrides;

/// What the run does, with what that takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intent {
    /// Deploy, or roll back (`rollback`): the pipeline, as far as its goal.
    Deploy(Deploy),
    /// Show what a deploy (`Mode::Deploy`) or a rollback would change
    /// (`diff`, `--goal dry-activate`).
    Diff { mode: Mode },
    /// What the hosts run and boot (`status`).
    Status,
    /// Write the hosts' keys now (`keys`); `dry_run`: only list them.
    Keys { dry_run: bool },
}

/// The options of a deploy or a rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    /// Deploy, or roll back.
    pub mode: Mode,
    pub goal: Goal,
    /// `--dry-run`: print the plan, touch nothing.
    pub dry_run: bool,
    pub force: bool,
    pub preflight: bool,
    /// Replaces every host's `selfCheck` when set.
    pub self_check: Option<String>,
    /// What switch-to-configuration is told.
    pub switch_env: SwitchEnv,
    /// When to reboot a host into its new boot entry.
    pub reboot: Reboot,
    /// Show the changes and ask before activating anything; `Some(true)`:
    /// answered yes already (--yes).
    pub ask: Option<bool>,
    /// The command line's rollout settings.
    pub rollout: Overrides,
}

impl Default for Deploy {
    /// A deploy of every host as far as `switch`, with nothing asked for.
    fn default() -> Deploy {
        Deploy {
            mode: Mode::Deploy,
            goal: Goal::Switch,
            dry_run: false,
            force: false,
            preflight: true,
            self_check: None,
            switch_env: SwitchEnv::default(),
            reboot: Reboot::Never,
            ask: None,
            rollout: Overrides::default(),
        }
    }
}

impl Intent {
    /// The subcommand's name, as typed (`None`: a deploy or a rollback).
    pub fn subcommand(&self) -> Option<&'static str> {
        match self {
            Intent::Deploy(_) => None,
            Intent::Status => Some("status"),
            Intent::Diff { .. } => Some("diff"),
            Intent::Keys { .. } => Some("keys"),
        }
    }

    /// Touches no host (a plan, or a list of keys).
    pub fn dry_run(&self) -> bool {
        match self {
            Intent::Deploy(d) => d.dry_run,
            Intent::Keys { dry_run } => *dry_run,
            Intent::Diff { .. } | Intent::Status => false,
        }
    }

    /// The deploy's options, when it is one.
    pub fn deploy(&self) -> Option<&Deploy> {
        match self {
            Intent::Deploy(d) => Some(d),
            _ => None,
        }
    }
}
