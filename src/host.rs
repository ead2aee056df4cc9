//! What the pipeline does to a host, behind one small trait ([`Host`]), so
//! that a fake host can drive every branch of the pipeline in unit tests.
//! [`SshHost`] is the real one: an ssh master, the on-target agent, Nix.

use std::future::Future;

use crate::agent::{self, AgentAction, AgentState, AgentStatus, CheckVerdict, Facts, Health};
use crate::agent::{HostLock, LockError, RunDir, SwitchEnv};
use crate::events::Reason;
use crate::inventory::HealthCheck;
use crate::nix::{self, Archive, NixError, StorePath};
use crate::process::{Lines, ProcessError};
use crate::ssh::{Destination, Ssh, SshError};

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
            HostError::Lock(LockError::Process(p)) | HostError::Process(p) => match p {
                ProcessError::Timeout { .. } => Reason::Timeout,
                ProcessError::NeedsPassword { .. } => Reason::Auth,
                ProcessError::Disconnected { .. } => Reason::Unreachable,
                _ => phase,
            },
            HostError::Lock(LockError::Failed { .. }) | HostError::Unexpected(_) => phase,
        }
    }
}

pub type HostResult<T> = Result<T, HostError>;

/// The operations of the per-host pipeline. Every method is bounded by the
/// `secs` it is given (or the check's own timeout).
pub trait Host: Send {
    /// Open the connection.
    fn connect(&mut self) -> impl Future<Output = HostResult<()>> + Send;
    /// Install the agent and take the host lock; returns the activation
    /// units of other runs still going on the host.
    fn lock(
        &mut self,
        owner: &str,
        secs: u64,
    ) -> impl Future<Output = HostResult<Vec<String>>> + Send;
    /// The system state and failed units (waits for start-up to finish).
    fn health(&mut self, secs: u64) -> impl Future<Output = HostResult<Health>> + Send;
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
    /// Build a configuration of a copied flake on the host (GC-rooted).
    fn build(
        &mut self,
        source: &StorePath,
        configuration: &str,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<StorePath>> + Send;
    /// Build a configuration here (`buildOn = "local"`).
    fn build_local(
        &mut self,
        flake: &str,
        configuration: &str,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<StorePath>> + Send;
    /// Copy a closure built here to the host (GC-rooted there).
    fn copy_closure(
        &mut self,
        path: &StorePath,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<()>> + Send;
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
    /// checks and switch inhibitors.
    fn pre_switch_check(
        &mut self,
        toplevel: &StorePath,
        env: SwitchEnv,
        secs: u64,
        out: Lines<'_>,
    ) -> impl Future<Output = HostResult<CheckVerdict>> + Send;
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
    /// After an error starting an action: did it start anyway?
    fn probe(&mut self, secs: u64) -> impl Future<Output = HostResult<bool>> + Send;
    /// Follow the agent until it needs us or ends (waiting through `patient`).
    fn watch(
        &mut self,
        seen: &mut usize,
        patient: Option<&AgentState>,
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
    /// Confirm the activation over a brand-new login.
    fn confirm(&mut self, secs: u64) -> impl Future<Output = HostResult<()>> + Send;
    /// Is the connection alive?
    fn alive(&mut self) -> impl Future<Output = bool> + Send;
    /// Open a new connection after a lost one (and take the host lock again
    /// if it was held).
    fn reconnect(&mut self) -> impl Future<Output = HostResult<()>> + Send;
    /// Drop the run's GC root on the host.
    fn drop_root(&mut self, secs: u64) -> impl Future<Output = HostResult<()>> + Send;
    /// Release the lock and close the connection.
    fn close(self) -> impl Future<Output = ()> + Send;
    /// Where to look on the host when its state is in doubt.
    fn inspect_hint(&self) -> String;
}

/// What the hosts of a run share: the flake, archived once.
#[derive(Default)]
pub struct Shared {
    archive: tokio::sync::OnceCell<HostResult<Archive>>,
}

/// A real host over ssh.
pub struct SshHost {
    name: String,
    dest: Destination,
    run: RunDir,
    ssh: Option<Ssh>,
    lock: Option<HostLock>,
    /// Who we are to a concurrent deployer (set when the lock is taken).
    owner: String,
    /// Holds the GC root of a system built here until the run ends.
    local_root: Option<tempfile::TempDir>,
    shared: std::sync::Arc<Shared>,
}

impl SshHost {
    pub fn new(
        name: &str,
        dest: Destination,
        run_id: &str,
        shared: std::sync::Arc<Shared>,
    ) -> SshHost {
        SshHost {
            name: name.to_string(),
            dest,
            run: RunDir::new(run_id),
            ssh: None,
            lock: None,
            owner: String::new(),
            local_root: None,
            shared,
        }
    }

    fn ssh(&self) -> HostResult<&Ssh> {
        self.ssh.as_ref().ok_or_else(|| {
            HostError::Process(ProcessError::Disconnected { cmd: "(not connected)".into() })
        })
    }
}

impl Host for SshHost {
    async fn connect(&mut self) -> HostResult<()> {
        self.ssh = Some(Ssh::connect(&self.name, self.dest.clone()).await?);
        Ok(())
    }

    async fn lock(&mut self, owner: &str, secs: u64) -> HostResult<Vec<String>> {
        let ssh = self.ssh()?;
        agent::install(ssh, &self.run, true, secs).await?;
        let lock = agent::lock(ssh, &self.run, owner, secs).await?;
        let busy = lock.busy.clone();
        self.lock = Some(lock);
        self.owner = owner.to_string();
        Ok(busy)
    }

    async fn health(&mut self, secs: u64) -> HostResult<Health> {
        Ok(agent::health(self.ssh()?, &self.run, secs).await?)
    }

    async fn archive(&mut self, flake: &str, secs: u64, out: Lines<'_>) -> HostResult<Archive> {
        let archived = self.shared.archive.get_or_init(|| async {
            nix::archive(flake, secs, out).await.map_err(HostError::from)
        });
        archived.await.clone()
    }

    async fn copy_source(
        &mut self,
        archive: &Archive,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<()> {
        let ssh = self.ssh()?;
        let store = ssh.dest.store_uri();
        Ok(nix::copy(&archive.paths, &store, &ssh.nix_sshopts()?, secs, out).await?)
    }

    async fn build(
        &mut self,
        source: &StorePath,
        configuration: &str,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<StorePath> {
        let installable = nix::toplevel_installable(&format!("path:{source}"), configuration);
        Ok(nix::build(self.ssh()?, &installable, &self.run.gc_root(), secs, out).await?)
    }

    async fn build_local(
        &mut self,
        flake: &str,
        configuration: &str,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<StorePath> {
        let dir = tempfile::Builder::new()
            .prefix("deploy-flake-root.")
            .tempdir()
            .map_err(|e| HostError::Unexpected(format!("creating a GC root directory: {e}")))?;
        let root = dir.path().join("result").display().to_string();
        self.local_root = Some(dir);
        let installable = nix::toplevel_installable(flake, configuration);
        Ok(nix::build(&crate::process::Local, &installable, &root, secs, out).await?)
    }

    async fn copy_closure(
        &mut self,
        path: &StorePath,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<()> {
        let ssh = self.ssh()?;
        let store = ssh.dest.store_uri();
        nix::copy(std::slice::from_ref(path), &store, &ssh.nix_sshopts()?, secs, out).await?;
        Ok(nix::add_root(ssh, path, &self.run.gc_root(), secs).await?)
    }

    async fn generation(
        &mut self,
        requested: Option<u32>,
        secs: u64,
    ) -> HostResult<(u32, StorePath)> {
        Ok(nix::pick_generation(self.ssh()?, requested, secs).await?)
    }

    async fn facts(
        &mut self,
        toplevel: &StorePath,
        self_check: Option<&str>,
        secs: u64,
    ) -> HostResult<Facts> {
        Ok(agent::facts(self.ssh()?, &self.run, toplevel, self_check, secs).await?)
    }

    async fn pre_switch_check(
        &mut self,
        toplevel: &StorePath,
        env: SwitchEnv,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<CheckVerdict> {
        Ok(agent::check(self.ssh()?, &self.run, toplevel, env, secs, out).await?)
    }

    async fn self_check(&mut self, script: &str, secs: u64, out: Lines<'_>) -> HostResult<()> {
        Ok(nix::self_check(self.ssh()?, script, secs, out).await?)
    }

    async fn start(&mut self, action: &AgentAction, secs: u64) -> HostResult<()> {
        Ok(agent::start(self.ssh()?, &self.run, action, secs).await?)
    }

    async fn probe(&mut self, secs: u64) -> HostResult<bool> {
        Ok(agent::probe(self.ssh()?, &self.run, secs).await?)
    }

    async fn watch(
        &mut self,
        seen: &mut usize,
        patient: Option<&AgentState>,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<AgentStatus> {
        Ok(agent::watch(self.ssh()?, &self.run, seen, patient, secs, out).await?)
    }

    async fn abort(&mut self, cause: Reason, why: &str, secs: u64) -> HostResult<()> {
        Ok(agent::abort(self.ssh()?, &self.run, cause, why, secs).await?)
    }

    async fn health_check(&mut self, check: &HealthCheck) -> Result<(), String> {
        let ssh = self.ssh().map_err(|e| e.to_string())?;
        crate::health::run_check(ssh, check).await
    }

    async fn confirm(&mut self, secs: u64) -> HostResult<()> {
        Ok(agent::confirm(&self.ssh()?.fresh_login(), &self.run, secs).await?)
    }

    async fn alive(&mut self) -> bool {
        match &self.ssh {
            Some(s) => s.alive().await,
            None => false,
        }
    }

    async fn reconnect(&mut self) -> HostResult<()> {
        match &mut self.ssh {
            Some(s) => s.reconnect().await?,
            None => return self.connect().await,
        }
        if self.lock.take().is_some() {
            self.relock().await?;
        }
        Ok(())
    }

    async fn drop_root(&mut self, secs: u64) -> HostResult<()> {
        Ok(agent::drop_root(self.ssh()?, &self.run, secs).await?)
    }

    async fn close(mut self) {
        self.lock = None;
        if let Some(ssh) = self.ssh.take() {
            ssh.close().await;
        }
    }

    fn inspect_hint(&self) -> String {
        self.run.inspect_hint()
    }
}

impl SshHost {
    /// Take the host lock again after a reconnect. The holder of the lost
    /// connection may still hold it until it misses our heartbeats: wait
    /// for it, but not for another run.
    async fn relock(&mut self) -> HostResult<()> {
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_secs(agent::HEARTBEAT_LOST_SECS + 10);
        // After a reboot the agent is gone too (it lives in /run).
        agent::install(self.ssh()?, &self.run, false, 10).await?;
        loop {
            let ssh = self.ssh()?;
            match agent::lock(ssh, &self.run, &self.owner, 10).await {
                Ok(lock) => {
                    self.lock = Some(lock);
                    return Ok(());
                }
                Err(LockError::Held { holder })
                    if holder.contains(&format!("run {} ", self.run.id()))
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
