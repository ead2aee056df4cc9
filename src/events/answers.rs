//! What `status` and `diff` say of a host, as their events carry it
//! (`host-status`, `host-diff`): plain data, its JSON the contract. Where
//! each part is read from or made is beside its reader: the agent's
//! answers in `agent::answers` (with systemd's and the agent's words),
//! the rest in `status`, `diff` and `upload`.

use std::collections::BTreeMap;

/// One host's answer, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub host: String,
    /// `None`: reachable.
    pub error: Option<String>,
    pub state: Option<HostState>,
    /// Where what the host runs, boots and was last given disagree.
    pub drift: Vec<String>,
}

/// What `status` says about a host (read-only).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostState {
    pub current: Option<String>,
    pub profile: Option<String>,
    pub booted: Option<String>,
    /// The system the bootloader's default entry boots, where it says.
    pub default_entry: Option<String>,
    pub boot_id: Option<String>,
    /// `systemctl is-system-running`.
    pub state: SystemState,
    pub failed_units: Vec<String>,
    /// What only a reboot brings in for what it boots (`None`: unknown).
    pub needs_reboot: Option<Vec<String>>,
    /// Who holds the host lock, when someone does.
    pub lock: Option<String>,
    /// Switches going on now.
    pub busy: Vec<String>,
    /// The last deploy the host recorded.
    pub last: LastDeploy,
}

/// systemd's state of the system (`systemctl is-system-running`), read
/// from the agent's answer in `agent::answers` and nowhere else (its
/// words, and its JSON as them, are there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SystemState {
    Initializing,
    Starting,
    Running,
    Degraded,
    Maintenance,
    Stopping,
    Offline,
    /// systemd could not tell, or there was no answer.
    #[default]
    Unknown,
    /// A word this deployer does not know (a newer systemd's).
    Other(String),
}

/// The last deploy a host recorded: how it ended, and the rest of its
/// record as it says it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LastDeploy {
    /// How it ended (`None`: no record, or a word this deployer does not know).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<LastOutcome>,
    /// `run`, `when`, `system`, `by`, `flake`, `revision`, `goal`.
    #[serde(flatten)]
    pub fields: BTreeMap<String, String>,
}

/// How the last deploy to a host ended, as the agent records it (the
/// `outcome` of its last-deploy record, kept across reboots): the word the
/// agent writes is [`LastOutcome::as_str`] (beside the agent's other words,
/// in `agent/mod.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LastOutcome {
    /// Confirmed, and its boot entry written.
    Deployed,
    /// Confirmed; no boot entry written (yet, or with `--goal test`).
    Confirmed,
    /// Activated, not confirmed, not rolled back (magicRollback off).
    Unconfirmed,
    RolledBack,
    RollbackFailed,
    /// Refused before it activated anything.
    Refused,
    /// Confirmed, but writing its boot entry failed.
    BootFailed,
    /// Replaced by another switch before its confirmation was recorded.
    Superseded,
}

/// One host's changes, or why there are none to show.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostDiff {
    pub host: String,
    pub error: Option<String>,
    /// What it runs now, and what a deploy would activate.
    pub current: Option<String>,
    pub new: Option<String>,
    pub up_to_date: bool,
    pub changes: Option<Changes>,
    /// The keys a deploy would write (never their content).
    pub keys: Vec<Listed>,
}

/// What activating a system would change on a host (read-only).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    /// `nix store diff-closures` lines: `name: old → new, +size`.
    pub packages: Vec<PackageChange>,
    /// Closure sizes in bytes: running, new.
    pub closure_bytes: Option<(u64, u64)>,
    /// Units that would `stop`, `restart`, `start`, `reload`.
    pub units: BTreeMap<String, Vec<String>>,
    pub needs_reboot: Option<Vec<String>>,
    /// The parts (`packages`, `units`) that could not be found out, and
    /// why: their lists above are empty because nothing is known, not
    /// because nothing changes.
    pub unknown: BTreeMap<String, String>,
}

/// One package whose versions differ.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackageChange {
    pub name: String,
    /// `None`: added (not in the running system).
    pub old: Option<String>,
    /// `None`: removed.
    pub new: Option<String>,
    /// As Nix says it, e.g. `+12.3 KiB`.
    pub size: Option<String>,
}

/// A key as listed: everything but its content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    pub name: String,
    pub path: String,
    pub user: String,
    pub group: String,
    pub permissions: String,
    pub upload_at: &'static str,
}
