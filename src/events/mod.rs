//! The typed events of a run: the only contract between the engine (runner
//! and pipeline) and everything that prints. The engine writes no text for
//! the terminal; renderers in `report` turn events into text or JSON. Its
//! only other voice is `tracing` (warnings and errors; more with `-v`),
//! which the binary writes to stderr.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

/// The version of the JSON Lines stream (`--json`).
pub const JSON_VERSION: u32 = 1;

/// The phases of the per-host pipeline, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Connect,
    Lock,
    Preflight,
    Copy,
    Build,
    SelfCheck,
    Activate,
    Confirm,
    Boot,
    /// `--reboot`: reboot into the new boot entry, come back, check health.
    Reboot,
}

impl Phase {
    /// Every phase, in pipeline order.
    pub const ALL: [Phase; 10] = [
        Phase::Connect,
        Phase::Lock,
        Phase::Preflight,
        Phase::Copy,
        Phase::Build,
        Phase::SelfCheck,
        Phase::Activate,
        Phase::Confirm,
        Phase::Boot,
        Phase::Reboot,
    ];

    /// The phase's name in `timeouts` (lib/rules.json) and `--timeout`.
    pub fn timeout_key(self) -> &'static str {
        match self {
            Phase::SelfCheck => "selfCheck",
            p => p.as_str(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Lock => "lock",
            Phase::Preflight => "preflight",
            Phase::Copy => "copy",
            Phase::Build => "build",
            Phase::SelfCheck => "self-check",
            Phase::Activate => "activate",
            Phase::Confirm => "confirm",
            Phase::Boot => "boot",
            Phase::Reboot => "reboot",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a host ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Now running and booting the new system.
    Deployed,
    /// Already running and booting the built system; nothing activated.
    UpToDate,
    /// Did not succeed, and nothing of the run changed the host.
    Failed,
    /// Activated, then returned to the previous system; boot entry untouched.
    RolledBack,
    /// Activated, not confirmed and not rolled back (magicRollback off): the
    /// host runs the new system and boots the previous one.
    Unconfirmed,
    /// Activated, then replaced by another switch (an administrator's
    /// `switch-to-configuration`, an automatic upgrade) before its
    /// confirmation was recorded or its boot entry written: the host runs
    /// what the other switch left (the report's `system`); nothing more of
    /// the run was done.
    Superseded,
    /// May be in an unknown state: the report says what to inspect.
    Unknown,
    /// Not started because the run was interrupted.
    Cancelled,
    /// Not started because the rollout halted (too many hosts failed).
    Skipped,
    /// Deployed and confirmed, but the run was interrupted before its soak
    /// checked the host again: it runs the new system, unchecked.
    Unchecked,
    /// The run changed the host (activated its system, or wrote its boot
    /// entry), then a later step failed: the reboot (`--reboot`: it did not
    /// reboot, came back in another system, or came back unhealthy), or the
    /// soak's check, where returning it to its previous system was not
    /// possible. The report's `system` and `boot` say what it runs and boots.
    DeployedThenFailed,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 11] = [
        Outcome::Deployed,
        Outcome::UpToDate,
        Outcome::Failed,
        Outcome::RolledBack,
        Outcome::Unconfirmed,
        Outcome::Superseded,
        Outcome::Unknown,
        Outcome::Cancelled,
        Outcome::Skipped,
        Outcome::Unchecked,
        Outcome::DeployedThenFailed,
    ];

    /// Its wire word: `outcome` in `--json` (`up-to-date`). People read
    /// its `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Deployed => "deployed",
            Outcome::UpToDate => "up-to-date",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled-back",
            Outcome::Unconfirmed => "unconfirmed",
            Outcome::Superseded => "superseded",
            Outcome::Unknown => "unknown",
            Outcome::Cancelled => "cancelled",
            Outcome::Skipped => "skipped",
            Outcome::Unchecked => "unchecked",
            Outcome::DeployedThenFailed => "deployed-then-failed",
        }
    }

    /// What the summary and the live display call it.
    fn label(self) -> &'static str {
        match self {
            Outcome::Deployed => "deployed",
            Outcome::UpToDate => "up to date",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled back",
            Outcome::Unconfirmed => "activated, not confirmed",
            Outcome::Superseded => "superseded",
            Outcome::Unknown => "UNKNOWN STATE",
            Outcome::Cancelled => "cancelled",
            Outcome::Skipped => "skipped",
            Outcome::Unchecked => "deployed, unchecked",
            Outcome::DeployedThenFailed => "deployed, then failed",
        }
    }

    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Deployed | Outcome::UpToDate)
    }

    /// Counts against a rollout's failure budget: the host was tried and
    /// did not succeed (skipped and cancelled hosts never started).
    pub fn counts_as_failure(self) -> bool {
        matches!(
            self,
            Outcome::Failed
                | Outcome::RolledBack
                | Outcome::Unconfirmed
                | Outcome::Superseded
                | Outcome::Unknown
                | Outcome::DeployedThenFailed
        )
    }
}

/// For people: `up to date`, `activated, not confirmed`, `UNKNOWN STATE`.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a host did not succeed, for machines (`--json`): the human message
/// says the same in words. Additive: new reasons may appear in version 1.
///
/// | reason | meaning |
/// |---|---|
/// | `unreachable` | no ssh connection (refused, timed out, lost before anything changed) |
/// | `host-key` | the host's key is not in known_hosts, or it changed |
/// | `auth` | the host refused our key, or sudo wants a password |
/// | `ssh-config` | the host's sshOpts cannot be used |
/// | `locked` | another deploy-flake run holds the host lock |
/// | `lock-failed` | the host lock could not be taken (the message says why: its state in `/run` could not be written, ...) |
/// | `lock-lost` | the run lost the host lock before changing the host (its deployer was silent for longer than the lock holder waits) and another run took it or changed the host meanwhile; nothing changed |
/// | `busy` | another switch is going on the host (another run, nixos-rebuild, an automatic upgrade) |
/// | `preflight` | the host was not healthy before the deploy, or its `/run` had no room for the run's state |
/// | `copy` | copying the flake or the closure failed |
/// | `build` | building the system failed |
/// | `build-host` | the build host could not be reached, or the flake not brought to it |
/// | `not-a-system` | the result is not a NixOS system, or the host lacks what one needs (systemd, flock) |
/// | `superseded` | another switch replaced the run's system during the confirmation window; no boot entry was written, and the keys it wrote before the activation are put back |
/// | `self-check` | the system's self-check refused it |
/// | `pre-switch-check` | the system's pre-switch checks or switch inhibitors refused a live switch |
/// | `reboot-required` | the new system's init is incompatible: it takes a reboot (`--goal boot`) |
/// | `activation-failed` | `switch-to-configuration test` failed, or a unit failed |
/// | `activation-script` | the activation script failed (`switch-to-configuration` exited with 2) |
/// | `health-check` | the system ran, but a health check failed |
/// | `not-confirmed` | no confirmation over a fresh login in time |
/// | `timeout` | a phase did not finish within its timeout (in `reboot`: the host did not come back within it) |
/// | `not-approved` | the system built differs from the one shown and approved, or the host runs another system than when it was shown (`--ask`) |
/// | `lost` | the connection was lost mid-activation and not regained, or the agent was killed |
/// | `rebooted` | the host rebooted during the run (not asked to by `--reboot`) |
/// | `rebooted-into-old` | asked to reboot (`--reboot`), it came back in another system than the one it was to boot |
/// | `reboot-failed` | asked to reboot (`--reboot`), it did not: the reboot could not be started, or the host kept running its old boot |
/// | `boot-entry` | writing the boot entry failed |
/// | `rollback-failed` | returning to the previous system failed |
/// | `cancelled` | the run was interrupted before the host activated, or (outcome `unchecked`) before its soak checked it |
/// | `soak` | the host failed its check after the soak: it was returned to the system it ran before the run |
/// | `halted` | not started: the rollout halted, more hosts failed than `maxFailures` allows |
/// | `keys` | a key could not be read here (its `keyFile`, its `keyCommand`) or written on the host |
/// | `internal` | a bug: the report says what to inspect |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Unreachable,
    HostKey,
    Auth,
    SshConfig,
    Locked,
    LockFailed,
    LockLost,
    Busy,
    Preflight,
    Copy,
    Build,
    BuildHost,
    NotASystem,
    Superseded,
    SelfCheck,
    PreSwitchCheck,
    RebootRequired,
    ActivationFailed,
    ActivationScript,
    HealthCheck,
    NotConfirmed,
    Timeout,
    NotApproved,
    Lost,
    Rebooted,
    RebootedIntoOld,
    RebootFailed,
    BootEntry,
    RollbackFailed,
    Cancelled,
    Soak,
    Halted,
    Keys,
    Internal,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 34] = [
        Reason::Unreachable,
        Reason::HostKey,
        Reason::Auth,
        Reason::SshConfig,
        Reason::Locked,
        Reason::LockFailed,
        Reason::LockLost,
        Reason::Busy,
        Reason::Preflight,
        Reason::Copy,
        Reason::Build,
        Reason::BuildHost,
        Reason::NotASystem,
        Reason::Superseded,
        Reason::SelfCheck,
        Reason::PreSwitchCheck,
        Reason::RebootRequired,
        Reason::ActivationFailed,
        Reason::ActivationScript,
        Reason::HealthCheck,
        Reason::NotConfirmed,
        Reason::Timeout,
        Reason::NotApproved,
        Reason::Lost,
        Reason::Rebooted,
        Reason::RebootedIntoOld,
        Reason::RebootFailed,
        Reason::BootEntry,
        Reason::RollbackFailed,
        Reason::Cancelled,
        Reason::Soak,
        Reason::Halted,
        Reason::Keys,
        Reason::Internal,
    ];

    /// The reason named by its `--json` word (`health-check`).
    pub fn parse(word: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == word)
    }

    /// Its wire word: `reason` in `--json` (`health-check`). People read
    /// its `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreachable => "unreachable",
            Reason::HostKey => "host-key",
            Reason::Auth => "auth",
            Reason::SshConfig => "ssh-config",
            Reason::Locked => "locked",
            Reason::LockFailed => "lock-failed",
            Reason::LockLost => "lock-lost",
            Reason::Busy => "busy",
            Reason::Preflight => "preflight",
            Reason::Copy => "copy",
            Reason::Build => "build",
            Reason::BuildHost => "build-host",
            Reason::NotASystem => "not-a-system",
            Reason::Superseded => "superseded",
            Reason::SelfCheck => "self-check",
            Reason::PreSwitchCheck => "pre-switch-check",
            Reason::RebootRequired => "reboot-required",
            Reason::ActivationFailed => "activation-failed",
            Reason::ActivationScript => "activation-script",
            Reason::HealthCheck => "health-check",
            Reason::NotConfirmed => "not-confirmed",
            Reason::Timeout => "timeout",
            Reason::NotApproved => "not-approved",
            Reason::Lost => "lost",
            Reason::Rebooted => "rebooted",
            Reason::RebootedIntoOld => "rebooted-into-old",
            Reason::RebootFailed => "reboot-failed",
            Reason::BootEntry => "boot-entry",
            Reason::RollbackFailed => "rollback-failed",
            Reason::Cancelled => "cancelled",
            Reason::Soak => "soak",
            Reason::Halted => "halted",
            Reason::Keys => "keys",
            Reason::Internal => "internal",
        }
    }
}

/// For people: the wire word in words (`health check`, `not a system`).
impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str().replace('-', " "))
    }
}

/// The end-of-host record: what the summary table and the exit code use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostReport {
    pub host: String,
    pub outcome: Outcome,
    /// The last phase that started.
    pub phase: Option<Phase>,
    #[serde(serialize_with = "as_millis")]
    pub duration: Duration,
    /// The system the host runs at the end, when known.
    pub system: Option<String>,
    /// The system the host boots at the end (its system profile), when known.
    pub boot: Option<String>,
    /// What only a reboot brings in for the system it boots: `kernel`,
    /// `initrd`, `kernel-modules`, `init` (empty: nothing; null: unknown).
    pub needs_reboot: Option<Vec<String>>,
    /// The system it ran before the run, when known.
    pub before: Option<String>,
    /// Why it failed, rolled back or is unknown, for machines.
    pub reason: Option<Reason>,
    /// Why it failed, rolled back or is unknown; what to inspect.
    pub message: Option<String>,
    /// Where its system was built (`built_on`) and where the closure came
    /// from (`copied_from`), when known.
    #[serde(flatten)]
    pub provenance: Provenance,
}

/// Where a host's system was built (the report's `built_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuiltOn {
    /// On the host itself.
    Target,
    /// On the deploying machine.
    Local,
    /// On the build host.
    Host,
    /// Nowhere in this run: a system built elsewhere.
    Prebuilt,
}

/// Where the system's closure came to the host from (`copied_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopiedFrom {
    /// The deploying machine: from its store, or relayed from the build host.
    Deployer,
    /// The build host, over its own ssh connection to the host.
    BuildHost,
    /// The binary cache it was pushed to (`pushTo`).
    Cache,
    /// The host's own substituters (a system built elsewhere).
    Substituters,
}

impl BuiltOn {
    pub fn as_str(self) -> &'static str {
        match self {
            BuiltOn::Target => "target",
            BuiltOn::Local => "local",
            BuiltOn::Host => "host",
            BuiltOn::Prebuilt => "prebuilt",
        }
    }
}

impl CopiedFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            CopiedFrom::Deployer => "deployer",
            CopiedFrom::BuildHost => "build-host",
            CopiedFrom::Cache => "cache",
            CopiedFrom::Substituters => "substituters",
        }
    }
}

/// Where a host's system came from, as its report says it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Provenance {
    pub built_on: Option<BuiltOn>,
    pub copied_from: Option<CopiedFrom>,
}

/// One thing that happened during a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The plan is fixed: these hosts, in this order.
    RunStarted {
        run_id: String,
        hosts: Vec<String>,
        /// A staged rollout's waves, in order (absent: every host at once).
        #[serde(skip_serializing_if = "Option::is_none")]
        waves: Option<Vec<Vec<String>>>,
    },
    /// A rollout wave starts (`wave` counts from 1, of `waves`).
    WaveStarted {
        wave: usize,
        waves: usize,
        canary: bool,
        hosts: Vec<String>,
    },
    /// Every host of the wave has ended; `failed`: those that did not succeed.
    WaveFinished {
        wave: usize,
        waves: usize,
        failed: Vec<String>,
        #[serde(serialize_with = "as_millis")]
        duration: Duration,
    },
    /// The wave's deployed hosts are left to run for `seconds`, then checked
    /// again.
    SoakStarted {
        wave: usize,
        seconds: u64,
        hosts: Vec<String>,
    },
    /// The soak's verdict: the hosts that passed, and those that failed
    /// (each is then returned to the system it ran before the run).
    /// `interrupted`: Ctrl-C ended the soak; no host was checked.
    SoakFinished {
        wave: usize,
        passed: Vec<String>,
        failed: Vec<SoakFailure>,
        interrupted: bool,
    },
    /// Too many hosts failed: no further wave starts; `skipped` never start.
    RolloutHalted {
        wave: usize,
        failed: Vec<String>,
        /// As given: a count or a percentage (`"10%"`).
        max_failures: String,
        /// The most failed hosts the rollout tolerates.
        budget: usize,
        skipped: Vec<String>,
    },
    PhaseStarted {
        host: String,
        phase: Phase,
    },
    PhaseFinished {
        host: String,
        phase: Phase,
        ok: bool,
        #[serde(serialize_with = "as_millis")]
        duration: Duration,
    },
    /// A line printed by a remote or local command working for `host`.
    Output {
        host: String,
        phase: Phase,
        line: String,
    },
    /// A note from the engine about `host` (e.g. "reconnected").
    Note {
        host: String,
        text: String,
    },
    /// The target returned to its previous system: `reason` in words,
    /// `cause` for machines.
    RolledBack {
        host: String,
        reason: String,
        cause: Option<Reason>,
    },
    HostFinished {
        report: HostReport,
    },
    /// `deploy-flake status`: one host's answer (the object `status`:
    /// `host`, `error`, `state`, `drift`), or why there is none. Nothing
    /// changed on it.
    HostStatus {
        host: String,
        status: Status,
    },
    /// `deploy-flake diff`: what activating its new system would change on
    /// one host (the object `diff`: `host`, `error`, `current`, `new`,
    /// `up_to_date`, `changes`, `keys`), or why it is not known. Nothing
    /// changed on it.
    HostDiff {
        host: String,
        diff: HostDiff,
    },
    /// The run's end: every host's report (none for `status` and `diff`:
    /// their answers are their `host-status` and `host-diff` events), and
    /// the exit code.
    RunFinished {
        reports: Vec<HostReport>,
        exit_code: u8,
        #[serde(serialize_with = "as_millis")]
        duration: Duration,
    },
}

/// A host that failed its soak check, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SoakFailure {
    pub host: String,
    pub message: String,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Where events go. Renderers and tests are just different sinks.
pub type Sink = Arc<dyn Fn(Event) + Send + Sync>;

mod answers;
#[cfg(test)]
mod tests;

pub use answers::{
    Changes, HostDiff, HostState, LastDeploy, LastOutcome, Listed, PackageChange, Status,
    SystemState,
};
