//! What the pipeline does to a host, behind one small trait ([`Host`]), so
//! that a fake host can drive every branch of the pipeline in unit tests.
//! [`SshHost`] is the real one: an ssh master, the on-target agent, Nix;
//! the hosts of a run share what is done once per run ([`Shared`]).

mod shared;
mod ssh;
mod system;

pub use shared::Shared;
pub use ssh::SshHost;
pub use system::{OnProgress, Progress, Step, System, SystemError};

use std::future::Future;

use crate::agent::{AgentAction, AgentState, AgentStatus, Changes, CheckVerdict, Facts, Health};
use crate::agent::{HostState, LockError, SwitchEnv};
use crate::build::{BuildError, BuiltOn, CopiedFrom, Way};
use crate::events::Reason;
use crate::fleet::{HealthCheck, HostSpec, KeySpec};
use crate::keys::{KeyError, Loaded};
use crate::nix::{Archive, NixError, StorePath};
use crate::process::{Lines, ProcessError};
use crate::ssh::SshError;

/// Why an operation on a host failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Connect(#[from] SshError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A command answered something we cannot use.
    #[error("{0}")]
    Unexpected(String),
    /// Getting the system from elsewhere failed (with its own reason).
    #[error(transparent)]
    Elsewhere(#[from] BuildError),
}

impl From<NixError> for HostError {
    fn from(e: NixError) -> HostError {
        match e {
            NixError::Process(p) => HostError::Process(p),
            other => HostError::Unexpected(other.to_string()),
        }
    }
}

impl HostError {
    /// The reason a host failed with this error in a phase whose own
    /// reason is `phase`: timeouts, lost connections and refused logins
    /// say so whatever the phase.
    pub fn reason(&self, phase: Reason) -> Reason {
        match self {
            HostError::Connect(e) if e.is_host_key() => Reason::HostKey,
            HostError::Connect(e) if e.is_auth() => Reason::Auth,
            HostError::Connect(SshError::SshOpts(_)) => Reason::SshConfig,
            HostError::Connect(_) => Reason::Unreachable,
            HostError::Lock(LockError::Held { .. }) => Reason::Locked,
            HostError::Lock(LockError::NoFlock) => Reason::NotASystem,
            HostError::Lock(LockError::Failed { .. }) => Reason::LockFailed,
            HostError::Lock(LockError::NoSpace { .. }) => Reason::Preflight,
            HostError::Lock(LockError::Process(p)) | HostError::Process(p) => match p {
                ProcessError::Timeout { .. } => Reason::Timeout,
                ProcessError::NeedsPassword { .. } => Reason::Auth,
                ProcessError::Disconnected { .. } => Reason::Unreachable,
                _ => phase,
            },
            HostError::Unexpected(_) => phase,
            HostError::Elsewhere(e) => e.reason,
        }
    }
}

pub type HostResult<T> = Result<T, HostError>;

/// What a request to the agent (a start, a confirmation) followed in the
/// same round trip gave.
#[derive(Debug)]
pub struct Followed {
    /// The host said the request took effect: an error is the following's.
    pub delivered: bool,
    pub status: HostResult<AgentStatus>,
}

/// What a host says as it is locked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locked {
    /// The switches of others still going on the host (other runs'
    /// activations, nixos-rebuild, automatic upgrades).
    pub busy: Vec<String>,
    /// Its health, when asked for.
    pub health: Option<Health>,
    /// Taken back after it was lost: another run held it in between.
    pub held_meanwhile: bool,
}

/// What a soak sees of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Look {
    pub health: Health,
    /// What it runs (`/run/current-system`).
    pub current: Option<String>,
}

/// The operations of the per-host pipeline. Every method is bounded by the
/// `secs` it is given (or the check's own timeout). The required methods
/// are single operations on the host; a sequence of them that more than
/// one caller needs is a provided method built on them.
pub trait Host: Send {
    /// Open the connection.
    fn connect(&mut self) -> impl Future<Output = HostResult<()>> + Send;
    /// Install the agent and take the host lock, in one round trip.
    /// `origin`: who deploys from which flake (`<key> <value>` lines), kept
    /// with the run on the host. With `health_secs`, the host's health
    /// comes with the lock (the preflight).
    fn lock(
        &mut self,
        owner: &str,
        origin: &str,
        health_secs: Option<u64>,
        secs: u64,
    ) -> impl Future<Output = HostResult<Locked>> + Send;
    /// The system state and failed units (waits for start-up to finish).
    fn health(&mut self, secs: u64) -> impl Future<Output = HostResult<Health>> + Send;
    /// The health and what the host runs, whether or not the agent is
    /// installed (read-only: a soak's look).
    fn look(&mut self, secs: u64) -> impl Future<Output = HostResult<Look>> + Send;
    /// What the host runs, boots and lacks, its lock and last deploy,
    /// read-only: nothing is installed or written (`deploy-flake status`).
    fn status(&mut self, secs: u64) -> impl Future<Output = HostResult<HostState>> + Send;
    /// What activating `toplevel` would change (packages, closure size,
    /// units, reboot) on a host that runs `current`, changing nothing
    /// (`deploy-flake diff`).
    fn changes(
        &mut self,
        current: Option<&str>,
        toplevel: &StorePath,
        secs: u64,
    ) -> impl Future<Output = HostResult<Changes>> + Send;
    /// The flake and its inputs in this machine's store (once per run,
    /// shared by every host).
    fn archive(
        &mut self,
        flake: &str,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<Archive>> + Send;
    /// Copy the archived flake and its inputs to the host.
    fn copy_source(
        &mut self,
        archive: &Archive,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<()>> + Send;
    /// Build a configuration of a copied flake on the host (GC-rooted);
    /// the [`Host::facts`] of what it built come with it.
    fn build(
        &mut self,
        source: &StorePath,
        configuration: &str,
        self_check: Option<&str>,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<(StorePath, Facts)>> + Send;
    /// The system, got from elsewhere as `way` says: built here or on the
    /// build host (once per configuration, whatever the number of hosts),
    /// or built before (`system`); `flake` is the flake reference.
    fn build_elsewhere(
        &mut self,
        flake: &str,
        way: &Way,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<StorePath>> + Send;
    /// Bring that system's closure to the host (only what it lacks) and
    /// GC-root it there; says where it came from.
    fn deliver(
        &mut self,
        way: &Way,
        path: &StorePath,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<CopiedFrom>> + Send;
    /// The system of `spec`'s configuration of `flake`, got as its record
    /// says: the flake copied to the host and built there (the facts of
    /// the system, with `self_check`, come with the build), or the system
    /// got from elsewhere and its closure delivered. Each step is said to
    /// `progress` as it starts; nothing on the host changes.
    fn system(
        &mut self,
        flake: &str,
        spec: &HostSpec,
        self_check: Option<&str>,
        progress: OnProgress<'_>,
    ) -> impl Future<Output = Result<System, SystemError>> + Send {
        async move {
            let t = spec.timeouts;
            let fail = |step| move |e| SystemError::Failed(step, e);
            if let Some(way) = crate::build::way(spec).map_err(SystemError::Way)? {
                let on = way.built_on();
                progress(Progress::BuiltOn(on));
                if on != BuiltOn::Prebuilt {
                    progress(Progress::Starts(Step::Build));
                }
                let built = self.build_elsewhere(flake, &way, t.build, &mut lines(progress)).await;
                let path = built.map_err(fail(Step::Build))?;
                progress(Progress::Starts(Step::Copy));
                let from = self.deliver(&way, &path, t.copy, &mut lines(progress)).await;
                let copied_from = Some(from.map_err(fail(Step::Copy))?);
                return Ok(System { path, facts: None, copied_from });
            }
            progress(Progress::BuiltOn(BuiltOn::Target));
            progress(Progress::Starts(Step::Copy));
            let archive = self.archive(flake, t.copy, &mut lines(progress)).await;
            let archive = archive.map_err(fail(Step::Copy))?;
            let copied = self.copy_source(&archive, t.copy, &mut lines(progress)).await;
            copied.map_err(fail(Step::Copy))?;
            progress(Progress::Starts(Step::Build));
            let (source, cfg) = (&archive.source, &spec.configuration);
            let built = self.build(source, cfg, self_check, t.build, &mut lines(progress)).await;
            let (path, facts) = built.map_err(fail(Step::Build))?;
            Ok(System { path, facts: Some(facts), copied_from: None })
        }
    }
    /// The host's keys with their content, each read here once per run
    /// (however many hosts use it).
    fn read_keys(
        &mut self,
        keys: &std::collections::BTreeMap<String, KeySpec>,
    ) -> impl Future<Output = Result<Vec<Loaded>, KeyError>> + Send;
    /// Send the keys for the activation: the agent writes pre-activation
    /// keys before the switch and post-activation keys once confirmed, and
    /// puts the previous ones back on a rollback. With `keep`, the previous
    /// keys stay after the confirmation (a soak follows).
    fn stage_keys(
        &mut self,
        keys: &[Loaded],
        keep: bool,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<()>> + Send;
    /// Write the keys now, each atomically (the system is not changed):
    /// if one cannot be written, those written before it are put back.
    fn upload_keys(
        &mut self,
        keys: &[Loaded],
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<()>> + Send;
    /// For a revert after a failed soak: the activation puts back the keys
    /// the host had before run `from_run` (the content it kept of the keys
    /// that run replaced; the keys it created are removed).
    fn adopt_keys(
        &mut self,
        from_run: &str,
        secs: u64,
    ) -> impl Future<Output = HostResult<()>> + Send;
    /// The soak passed: the previous content of the keys this run replaced
    /// is not needed any more.
    fn drop_kept_keys(&mut self, secs: u64) -> impl Future<Output = HostResult<()>> + Send;
    /// The staged keys are not needed: the activation did not start.
    fn discard_keys(&mut self, secs: u64) -> impl Future<Output = HostResult<()>> + Send;
    /// The generation of the system profile a rollback returns to.
    fn generation(
        &mut self,
        requested: Option<u32>,
        secs: u64,
    ) -> impl Future<Output = HostResult<(u32, StorePath)>> + Send;
    /// What the host runs and boots, and what `toplevel` offers.
    fn facts(
        &mut self,
        toplevel: &StorePath,
        self_check: Option<&str>,
        secs: u64,
    ) -> impl Future<Output = HostResult<Facts>> + Send;
    /// `switch-to-configuration check` of the new system: its pre-switch
    /// checks and switch inhibitors; after `self_check` (as [`Host::self_check`]
    /// runs it), when given, in the same round trip. `Ok(Err(e))`: the
    /// self-check failed with `e`, and the check did not run.
    fn pre_switch_check(
        &mut self,
        toplevel: &StorePath,
        env: SwitchEnv,
        self_check: Option<&str>,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<Result<CheckVerdict, HostError>>> + Send;
    /// Run a self-check script of the new system.
    fn self_check(
        &mut self,
        script: &str,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<()>> + Send;
    /// Start an agent action (a transient unit on the host).
    fn start(
        &mut self,
        action: &AgentAction,
        secs: u64,
    ) -> impl Future<Output = HostResult<()>> + Send;
    /// Start an agent action and follow it as `watch` does (not waiting
    /// through any state), in one round trip.
    fn launch(
        &mut self,
        action: &AgentAction,
        seen: &mut usize,
        health_secs: Option<u64>,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = Followed> + Send;
    /// After an error starting an action: did it start anyway?
    fn probe(&mut self, secs: u64) -> impl Future<Output = HostResult<bool>> + Send;
    /// Follow the agent until it needs us or ends (waiting through
    /// `patient`); with `health_secs`, a watch that ends awaiting the
    /// confirmation answers the host's health too.
    fn watch(
        &mut self,
        seen: &mut usize,
        patient: Option<&AgentState>,
        health_secs: Option<u64>,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<AgentStatus>> + Send;
    /// Tell the agent to stop and go back to the previous system.
    fn abort(
        &mut self,
        cause: Reason,
        why: &str,
        secs: u64,
    ) -> impl Future<Output = HostResult<()>> + Send;
    /// One of the user's health checks, until it passes or times out.
    fn health_check(
        &mut self,
        check: &HealthCheck,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Confirm the activation over a brand-new login, and follow the agent
    /// to its answer as `watch` does (waiting through
    /// `awaiting-confirmation`), in the same round trip.
    fn confirm(
        &mut self,
        seen: &mut usize,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = Followed> + Send;
    /// Is the connection alive?
    fn alive(&mut self) -> impl Future<Output = bool> + Send;
    /// Open a new connection after a lost one (and take the host lock again
    /// if it was held, ending the run's own holder of the lost connection).
    fn reconnect(&mut self) -> impl Future<Output = HostResult<()>> + Send;
    /// The host lock was taken and is no longer held (its holder on the
    /// host ended: the deployer was silent for too long): why.
    fn lock_lost(&mut self) -> Option<String>;
    /// Take the host lock again over the connection there is (after
    /// [`Host::lock_lost`]); what the host says as it is locked.
    fn relock(&mut self, secs: u64) -> impl Future<Output = HostResult<Locked>> + Send;
    /// The kernel's boot id (a new one at every boot).
    fn boot_id(&mut self, secs: u64) -> impl Future<Output = HostResult<String>> + Send;
    /// Ask the host to reboot a second from now (the command returns
    /// first). The host lock dies with the reboot: a reconnect does not
    /// take it again; `lock` does.
    fn reboot(&mut self, secs: u64) -> impl Future<Output = HostResult<()>> + Send;
    /// Drop the run's GC root on the host.
    fn drop_root(&mut self, secs: u64) -> impl Future<Output = HostResult<()>> + Send;
    /// Release the lock and close the connection.
    fn close(self) -> impl Future<Output = ()> + Send;
    /// Where to look on the host when its state is in doubt.
    fn inspect_hint(&self) -> String;
}

/// The lines of a step, said as progress.
fn lines<'a>(progress: OnProgress<'a>) -> impl FnMut(&str) + Send + 'a {
    move |l| progress(Progress::Line(l))
}
