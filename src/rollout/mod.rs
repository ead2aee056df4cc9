//! Rollouts: which hosts go in which wave, how many failures stop the
//! rollout, and how long a wave soaks before the next one starts.
//!
//! The settings come from `deployFlake.rollout` (lib/ resolves and checks
//! them with the rules of lib/rules.json) and the command line (`--canary`,
//! `--batches`, `--max-failures`, `--soak`), which replaces them key by key.
//! Everything here is pure: the runner asks it for the waves and, after
//! each wave, whether the next one may start.

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

pub use crate::fleet::{Settings, Size};

use crate::events::{HostReport, Outcome, Reason};
use crate::inventory::Inventory;
use crate::select::{self, SelectError, Target};

/// The command line's rollout flags: each replaces the flake's setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub canary: Option<Vec<String>>,
    pub batches: Option<Vec<Size>>,
    pub max_failures: Option<Size>,
    /// `Some(0)`: no soak.
    pub soak: Option<u64>,
}

/// A canary selector that matches no host.
#[derive(Debug, thiserror::Error)]
#[error("{from} `{word}`: {source}")]
pub struct CanaryError {
    /// Where the selector comes from: `--canary` or `deployFlake.rollout.canary`.
    pub from: &'static str,
    pub word: String,
    #[source]
    pub source: SelectError,
}

/// What the runner follows: the waves (indices into the targets, in
/// order), the failure budget and the soak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub waves: Vec<Wave>,
    /// More failed hosts than this stop the rollout.
    pub budget: usize,
    /// How `budget` was given (`1`, `10%`), for messages.
    pub max_failures: Size,
    /// Seconds; 0: no soak.
    pub soak: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wave {
    /// Indices into the run's targets.
    pub hosts: Vec<usize>,
    /// The canary wave.
    pub canary: bool,
}

impl Plan {
    /// Every host in one wave, no soak: what a run without a rollout plans
    /// (the tests compare against it).
    #[cfg(test)]
    pub fn single(n: usize) -> Plan {
        Plan {
            waves: vec![Wave { hosts: (0..n).collect(), canary: false }],
            budget: 0,
            max_failures: Size::Count(0),
            soak: 0,
        }
    }

    /// True when the run is staged (several waves, or a soak): the events
    /// and reports then speak of waves.
    pub fn is_staged(&self) -> bool {
        self.waves.len() > 1 || self.soak > 0
    }

    /// May the next wave start after `failed` hosts failed?
    pub fn may_continue(&self, failed: usize) -> bool {
        failed <= self.budget
    }
}

/// The settings of a run: the flake's, with the command line's on top.
pub fn settings(flake: Option<&Settings>, cli: &Overrides) -> Settings {
    let base = flake.cloned().unwrap_or_default();
    Settings {
        canary: cli.canary.clone().unwrap_or(base.canary),
        batches: cli.batches.clone().unwrap_or(base.batches),
        max_failures: cli.max_failures.unwrap_or(base.max_failures),
        soak: match cli.soak {
            Some(0) => None,
            Some(s) => Some(s),
            None => base.soak,
        },
    }
}

/// The plan of a run over `targets` (in run order). Canary selectors are
/// matched against the fleet (each must match some host), then kept to the
/// selected hosts: deploying only web hosts skips a db canary.
pub fn plan(
    inv: Option<&Inventory>,
    targets: &[Target],
    s: &Settings,
    canary_from: &'static str,
) -> Result<Plan, CanaryError> {
    let canaries = canary_names(inv, targets, &s.canary, canary_from)?;
    let (first, rest): (Vec<usize>, Vec<usize>) =
        (0..targets.len()).partition(|i| canaries.contains(targets[*i].name.as_str()));
    let mut waves = Vec::new();
    if !first.is_empty() {
        waves.push(Wave { hosts: first, canary: true });
    }
    let base = rest.len();
    let mut rest = rest.into_iter().peekable();
    let mut sizes = s.batches.iter().copied();
    let mut size = sizes.next().unwrap_or(Size::Percent(100));
    while rest.peek().is_some() {
        let n = size.of(base).max(1);
        waves.push(Wave { hosts: rest.by_ref().take(n).collect(), canary: false });
        if let Some(next) = sizes.next() {
            size = next;
        }
    }
    Ok(Plan {
        waves,
        budget: s.max_failures.of(targets.len()),
        max_failures: s.max_failures,
        soak: s.soak.unwrap_or(0),
    })
}

/// The names the canary selectors stand for: a target's own name (ad hoc
/// destinations included), or a fleet name, `@tag` or glob that matches.
fn canary_names<'a>(
    inv: Option<&'a Inventory>,
    targets: &'a [Target],
    words: &[String],
    from: &'static str,
) -> Result<BTreeSet<&'a str>, CanaryError> {
    let mut names = BTreeSet::new();
    for word in words {
        if let Some(t) = targets.iter().find(|t| t.name == *word) {
            names.insert(t.name.as_str());
            continue;
        }
        let matched = match inv {
            Some(inv) => select::match_pattern(inv, word),
            None => Err(SelectError::NeedsInventory { word: word.clone() }),
        };
        let matched = matched.map_err(|source| CanaryError { from, word: word.clone(), source })?;
        names.extend(matched);
    }
    Ok(names)
}

/// The reason a rollout stopped, in words: who failed, and the budget.
pub fn halted_message(failed: &[String], plan: &Plan, wave: usize) -> String {
    let n = failed.len();
    format!(
        "not started: the rollout halted after wave {wave}: {n} host{} failed ({}), more than \
         --max-failures {} allows ({})",
        if n == 1 { "" } else { "s" },
        failed.join(", "),
        plan.max_failures,
        plan.budget
    )
}

/// The final report of a host whose soak was interrupted before it was
/// checked again: it runs what it was deployed, unchecked.
pub fn unchecked(deployed: &HostReport) -> HostReport {
    let runs = deployed.system.as_deref().unwrap_or("the new system");
    HostReport {
        outcome: Outcome::Unchecked,
        reason: Some(Reason::Cancelled),
        message: Some(format!(
            "deployed and confirmed, but the run was interrupted before its soak checked it \
             again: it runs {runs}, unchecked"
        )),
        ..deployed.clone()
    }
}

/// The final report of a host that failed its soak: `deployed` is how its
/// deploy ended, `reverted` how the return to its previous system ended
/// (`None`: there was none to return to).
pub fn after_soak(
    deployed: &HostReport,
    reverted: Option<&HostReport>,
    why: &str,
    secs: u64,
) -> HostReport {
    let failed = format!("failed its check {secs} s after its wave: {why}");
    let (outcome, system, boot, message) = match reverted {
        None => (
            Outcome::DeployedThenFailed,
            deployed.system.clone(),
            deployed.boot.clone(),
            match deployed.before {
                Some(_) => {
                    format!("{failed}; it ran the same system before this run, so it keeps it")
                }
                None => format!(
                    "{failed}; what it ran before this run is not known, so it keeps the system \
                     deployed"
                ),
            },
        ),
        Some(r) if r.outcome.is_success() => (
            Outcome::RolledBack,
            r.system.clone(),
            r.boot.clone(),
            format!("{failed}; returned to the system it ran before this run"),
        ),
        Some(r) => {
            let (outcome, system, boot) = if r.outcome == Outcome::Unknown {
                (Outcome::Unknown, None, None)
            } else {
                (Outcome::DeployedThenFailed, deployed.system.clone(), deployed.boot.clone())
            };
            let how = r.message.clone().unwrap_or_else(|| r.outcome.to_string());
            let msg = format!("{failed}; returning to the system it ran before failed: {how}");
            (outcome, system, boot, msg)
        }
    };
    HostReport {
        outcome,
        duration: deployed.duration + reverted.map_or(Duration::ZERO, |r| r.duration),
        phase: reverted.and_then(|r| r.phase).or(deployed.phase),
        system,
        boot,
        needs_reboot: reverted.map_or(deployed.needs_reboot.clone(), |r| r.needs_reboot.clone()),
        reason: Some(Reason::Soak),
        message: Some(message),
        ..deployed.clone()
    }
}
