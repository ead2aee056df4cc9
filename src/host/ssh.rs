//! A real host over ssh: the ssh master, the on-target agent, Nix.

use super::{Followed, Host, HostError, HostResult, Locked, Look, Shared};
use crate::agent::{self, AgentAction, AgentState, AgentStatus, CheckVerdict, Facts, Health};
use crate::agent::{HostLock, LockError, RunDir, SwitchEnv};
use crate::build::{Build, CopiedFrom, Route, Way};
use crate::events::Reason;
use crate::fleet::{HealthCheck, KeySpec};
use crate::keys::{KeyError, Loaded};
use crate::nix::version::NixVersion;
use crate::nix::{self, Archive, StorePath};
use crate::process::{Exit, Lines, ProcessError, Spawner};
use crate::ssh::{Destination, Ssh, SshError};

/// Logins tried when the host answers but the login does not finish in time
/// (the master's at connect, a fresh one to confirm).
const LOGIN_ATTEMPTS: u32 = 3;

/// A real host over ssh.
pub struct SshHost {
    name: String,
    dest: Destination,
    run: RunDir,
    ssh: Option<Ssh>,
    lock: Option<HostLock>,
    /// Who we are to a concurrent deployer (set when the lock is taken).
    owner: String,
    /// Asked to reboot: the lock and the agent go with it, and a reconnect
    /// does not take the lock again (`lock` does, once it is back).
    rebooting: bool,
    /// The host's Nix, read with the lock: the flags of its Nix commands
    /// come from `nix::version` (none differs by version there today).
    nix: Option<NixVersion>,
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
            rebooting: false,
            nix: None,
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
        // ssh itself gives up on a host that does not answer (timeouts.connect);
        // ours firing means the host answered but the login was slow (a
        // starved deployer, a busy host): that is worth another try.
        let mut attempt = 1;
        loop {
            let connected = {
                let _slot = self.shared.cpu().await;
                Ssh::connect(&self.name, self.dest.clone()).await
            };
            match connected {
                Err(e @ SshError::ConnectTimeout { .. }) if attempt < LOGIN_ATTEMPTS => {
                    tracing::warn!("{}: {e}; trying again", self.name);
                    attempt += 1;
                }
                connected => {
                    self.ssh = Some(connected?);
                    return Ok(());
                }
            }
        }
    }

    async fn lock(
        &mut self,
        owner: &str,
        origin: &str,
        health_secs: Option<u64>,
        secs: u64,
    ) -> HostResult<Locked> {
        let ssh = self.ssh()?;
        let lock = agent::lock(ssh, &self.run, owner, Some(origin), health_secs, secs).await?;
        let locked =
            Locked { busy: lock.busy.clone(), health: lock.health.clone(), held_meanwhile: false };
        if self.nix != lock.nix {
            match lock.nix {
                Some(v) => tracing::debug!("{} runs {v}", self.name),
                None => tracing::debug!("{}: no Nix version it said could be read", self.name),
            }
            self.nix = lock.nix;
        }
        self.lock = Some(lock);
        self.owner = owner.to_string();
        self.rebooting = false;
        Ok(locked)
    }

    async fn health(&mut self, secs: u64) -> HostResult<Health> {
        Ok(agent::health(self.ssh()?, &self.run, secs).await?)
    }

    async fn look(&mut self, secs: u64) -> HostResult<Look> {
        let (health, current) = agent::look(self.ssh()?, &self.run, secs).await?;
        Ok(Look { health, current })
    }

    async fn status(&mut self, secs: u64) -> HostResult<agent::HostState> {
        Ok(agent::status(self.ssh()?, secs).await?)
    }

    async fn changes(
        &mut self,
        current: Option<&str>,
        toplevel: &StorePath,
        secs: u64,
    ) -> HostResult<agent::Changes> {
        Ok(agent::changes(self.ssh()?, current, toplevel, secs).await?)
    }

    async fn archive(&mut self, flake: &str, secs: u64, out: Lines<'_>) -> HostResult<Archive> {
        self.shared.archive(flake, secs, out).await
    }

    async fn copy_source(
        &mut self,
        archive: &Archive,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<()> {
        self.shared.upload(self.ssh()?, "the host", archive, secs, out).await
    }

    /// The facts come in the build's round trip.
    async fn build(
        &mut self,
        source: &StorePath,
        configuration: &str,
        self_check: Option<&str>,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<(StorePath, Facts)> {
        let installable = nix::toplevel_installable(&format!("path:{source}"), configuration);
        let build = nix::build_cmd(&installable, &self.run.gc_root()).secs(secs);
        let (stdout, facts) =
            agent::build_then_facts(self.ssh()?, &self.run, build, self_check, out).await?;
        Ok((nix::parse_build_json(&stdout)?, facts))
    }

    async fn build_elsewhere(
        &mut self,
        flake: &str,
        way: &Way,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<StorePath> {
        let (build_host, configuration) = match &way.build {
            Build::Local { configuration } => {
                return self.shared.build(flake, configuration, secs, out).await
            }
            Build::Prebuilt(path) => return Ok(path.clone()),
            Build::Host { build_host, configuration } => (build_host, configuration),
        };
        let host = self.shared.elsewhere.build_host(build_host)?;
        let conn = host.connect().await?;
        let archive = self.shared.archive(flake, secs, out).await?;
        let to = host.label();
        let mut lines = |l: &str| tracing::debug!("{to}: {l}");
        let upload = self.shared.upload(&conn.ssh, &to, &archive, secs, &mut lines);
        host.with_source(async { upload.await.map_err(|e| e.to_string()) }).await?;
        let installable =
            nix::toplevel_installable(&format!("path:{}", archive.source), configuration);
        Ok(host.build(&conn, &self.name, configuration, &installable, secs, out).await?)
    }

    async fn deliver(
        &mut self,
        way: &Way,
        path: &StorePath,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<CopiedFrom> {
        let ssh = self.ssh()?;
        if ssh.dest.password.is_some() {
            // `nix copy`'s `sudo nix-daemon` on the host cannot be given the
            // password: the closure goes from this machine's store over the
            // master instead (brought here from a build host first).
            if way.route != Route::Relay {
                out("the host's sudo asks for a password, which a copy by Nix cannot give: \
                     the system is sent from this machine over the connection instead");
            }
            crate::build::fetch_here(&self.shared.elsewhere, way, path, secs, &mut *out).await?;
            self.import_closure(path, secs, out).await?;
            let ssh = self.ssh()?;
            nix::add_root(ssh, path, &self.run.gc_root(), secs).await?;
            return Ok(CopiedFrom::Deployer);
        }
        // Nix's ssh rides the master and fails closed without it: a master
        // that died (and the host lock with it) is said as such.
        let lost = || ProcessError::Disconnected { cmd: "nix copy".into() };
        if !ssh.alive().await {
            return Err(HostError::Process(lost()));
        }
        let delivered = {
            let _slot = self.shared.cpu().await;
            let reg = &self.shared.elsewhere;
            crate::build::deliver(reg, ssh, &self.run.gc_root(), way, path, secs, out).await
        };
        if delivered.is_err() && !ssh.alive().await {
            return Err(HostError::Process(lost()));
        }
        Ok(delivered?)
    }

    async fn read_keys(
        &mut self,
        keys: &std::collections::BTreeMap<String, KeySpec>,
    ) -> Result<Vec<Loaded>, KeyError> {
        self.shared.keys(keys).await
    }

    async fn stage_keys(
        &mut self,
        keys: &[Loaded],
        keep: bool,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<()> {
        Ok(agent::keys::stage(self.ssh()?, &self.run, keys, keep, secs, out).await?)
    }

    async fn upload_keys(&mut self, keys: &[Loaded], secs: u64, out: Lines<'_>) -> HostResult<()> {
        Ok(agent::keys::upload(self.ssh()?, &self.run, keys, secs, out).await?)
    }

    async fn adopt_keys(&mut self, from_run: &str, secs: u64) -> HostResult<()> {
        let from = RunDir::new(from_run);
        Ok(agent::keys::adopt(self.ssh()?, &self.run, &from, secs).await?)
    }

    async fn drop_kept_keys(&mut self, secs: u64) -> HostResult<()> {
        Ok(agent::keys::drop_previous(self.ssh()?, &self.run, secs).await?)
    }

    async fn discard_keys(&mut self, secs: u64) -> HostResult<()> {
        Ok(agent::keys::discard(self.ssh()?, &self.run, secs).await?)
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
        self_check: Option<&str>,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<Result<CheckVerdict, HostError>> {
        let ssh = self.ssh()?;
        let checked = agent::check(ssh, &self.run, toplevel, env, self_check, secs, out).await?;
        // A failed self-check reads as if it had run alone.
        let (script, place) = (self_check.unwrap_or_default().to_string(), ssh.place());
        Ok(checked.map_err(|(exit, tail)| {
            HostError::Process(match exit {
                124 => ProcessError::Timeout { cmd: script, secs, place },
                code => ProcessError::Failed { cmd: script, place, exit: Exit::Code(code), tail },
            })
        }))
    }

    async fn self_check(&mut self, script: &str, secs: u64, out: Lines<'_>) -> HostResult<()> {
        Ok(nix::self_check(self.ssh()?, script, secs, out).await?)
    }

    async fn start(&mut self, action: &AgentAction, secs: u64) -> HostResult<()> {
        Ok(agent::start(self.ssh()?, &self.run, action, secs).await?)
    }

    async fn launch(
        &mut self,
        action: &AgentAction,
        seen: &mut usize,
        health_secs: Option<u64>,
        secs: u64,
        out: Lines<'_>,
    ) -> Followed {
        let ssh = match self.ssh() {
            Ok(ssh) => ssh,
            Err(e) => return Followed { delivered: false, status: Err(e) },
        };
        let (delivered, status) =
            agent::launch(ssh, &self.run, action, seen, health_secs, secs, out).await;
        Followed { delivered, status: status.map_err(HostError::from) }
    }

    async fn probe(&mut self, secs: u64) -> HostResult<bool> {
        Ok(agent::probe(self.ssh()?, &self.run, secs).await?)
    }

    async fn watch(
        &mut self,
        seen: &mut usize,
        patient: Option<&AgentState>,
        health_secs: Option<u64>,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<AgentStatus> {
        Ok(agent::watch(self.ssh()?, &self.run, seen, patient, health_secs, secs, out).await?)
    }

    async fn abort(&mut self, cause: Reason, why: &str, secs: u64) -> HostResult<()> {
        Ok(agent::abort(self.ssh()?, &self.run, cause, why, secs).await?)
    }

    async fn health_check(&mut self, check: &HealthCheck) -> Result<(), String> {
        let ssh = self.ssh().map_err(|e| e.to_string())?;
        crate::health::run_check(ssh, check).await
    }

    /// A fresh login can be slow on a busy deployer (a key exchange is
    /// CPU work): while the master shows the host is there, a login that
    /// timed out is tried again; a refused one is not.
    async fn confirm(&mut self, seen: &mut usize, secs: u64, out: Lines<'_>) -> Followed {
        let mut attempt = 1;
        loop {
            let fresh = match self.ssh() {
                Ok(ssh) => ssh.fresh_login(),
                Err(e) => return Followed { delivered: false, status: Err(e) },
            };
            let (delivered, status) = {
                let _slot = self.shared.cpu().await;
                agent::confirm(&fresh, &self.run, seen, secs, &mut *out).await
            };
            match status {
                Err(ProcessError::Timeout { .. })
                    if !delivered && attempt < LOGIN_ATTEMPTS && self.alive().await =>
                {
                    attempt += 1
                }
                status => return Followed { delivered, status: status.map_err(HostError::from) },
            }
        }
    }

    async fn alive(&mut self) -> bool {
        match &self.ssh {
            Some(s) => s.alive().await,
            None => false,
        }
    }

    async fn reconnect(&mut self) -> HostResult<()> {
        match &mut self.ssh {
            Some(s) => {
                let _slot = self.shared.cpu().await;
                s.reconnect().await?
            }
            None => return self.connect().await,
        }
        if self.lock.take().is_some() && !self.rebooting {
            self.take_back(10).await?;
        }
        Ok(())
    }

    fn lock_lost(&mut self) -> Option<String> {
        self.lock.as_ref().and_then(HostLock::lost)
    }

    async fn relock(&mut self, secs: u64) -> HostResult<Locked> {
        let before = self.lock.take().and_then(|l| l.serial);
        let mut locked = self.take_back(secs).await?;
        let after = self.lock.as_ref().and_then(|l| l.serial);
        // Ours is the next holder unless another run's came in between.
        locked.held_meanwhile = matches!((before, after), (Some(b), Some(a)) if a != b + 1);
        Ok(locked)
    }

    async fn boot_id(&mut self, secs: u64) -> HostResult<String> {
        Ok(agent::boot_id(self.ssh()?, secs).await?)
    }

    async fn reboot(&mut self, secs: u64) -> HostResult<()> {
        self.rebooting = true;
        Ok(agent::reboot(self.ssh()?, &self.run, secs).await?)
    }

    async fn drop_root(&mut self, secs: u64) -> HostResult<()> {
        Ok(agent::drop_root(self.ssh()?, &self.run, secs).await?)
    }

    async fn close(mut self) {
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
        if let Some(ssh) = self.ssh.take() {
            ssh.close().await;
        }
    }

    fn inspect_hint(&self) -> String {
        self.run.inspect_hint()
    }
}

impl SshHost {
    /// A closure built here, over the master into `nix-store --import`
    /// (as the flake's source goes): for a host whose sudo takes a
    /// password, which `nix copy`'s `sudo nix-daemon` on the host cannot be
    /// given. (The host's substituters are not asked.)
    async fn import_closure(
        &mut self,
        path: &StorePath,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<()> {
        let paths = nix::requisites(path, secs).await?;
        let missing = nix::missing(self.ssh()?, &paths, secs).await?;
        if missing.is_empty() {
            return Ok(());
        }
        let mut parts = Vec::with_capacity(missing.len());
        for p in &missing {
            parts.push(self.shared.export(p, secs).await?);
        }
        out(&format!("copying {} of {} paths over the connection", missing.len(), paths.len()));
        Ok(nix::import(self.ssh()?, parts, secs, out).await?)
    }

    /// Take the host lock again (after a reconnect, or after it was lost).
    /// The holder of the lost connection may still hold it until it misses
    /// our heartbeats: the agent ends it first, and the lock is ours again
    /// at once (which also renews the agent's window for the
    /// confirmation); another run's holder is not waited for.
    async fn take_back(&mut self, secs: u64) -> HostResult<Locked> {
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_secs(crate::budget::Budget::relock_wait());
        loop {
            // After a reboot the agent is gone too (it lives in /run).
            let ssh = self.ssh()?;
            match agent::lock(ssh, &self.run, &self.owner, None, None, secs).await {
                Ok(lock) => {
                    let locked =
                        Locked { busy: lock.busy.clone(), health: None, held_meanwhile: false };
                    self.lock = Some(lock);
                    return Ok(locked);
                }
                Err(LockError::Held { run: Some(run), .. })
                    if run == self.run.id() && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}
