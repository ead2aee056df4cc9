//! `--reboot`: once a host boots the run's system, reboot it into it, wait
//! for it to come back (a new boot id) within `timeouts.reboot`, and check
//! that it booted and runs that system and is healthy.
//!
//! The reboot is asked for from a transient timer a second ahead, so the
//! command returns before the host goes down; the master connection dies
//! with the host and is opened again, one attempt at a time, each bounded
//! by the connect timeout. The host lock and the run's state live in /run
//! and die with the reboot: that is expected, and the deployer takes the
//! lock again once the host is back.

use std::time::Duration;

use tokio::time::Instant;

use super::{End, HostRun};
use crate::agent::{Facts, LockError};
use crate::events::{Phase, Reason};
use crate::host::{Host, HostError};
use crate::nix::StorePath;

/// When to reboot a host whose boot entry is the run's system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reboot {
    #[default]
    Never,
    /// When it does not run what it boots: a new kernel, initrd, kernel
    /// modules or init, or a system written as the boot entry only
    /// (`--goal boot`).
    IfNeeded,
    Always,
}

impl Reboot {
    /// Its `--reboot` word.
    pub fn as_str(self) -> &'static str {
        match self {
            Reboot::Never => "never",
            Reboot::IfNeeded => "if-needed",
            Reboot::Always => "always",
        }
    }
}

/// Pure: does a host that ended so reboot? `end` is completed (what the
/// host runs, boots and needs a reboot for). Only a host that succeeded
/// and boots the run's system ever does.
pub fn wants_reboot(policy: Reboot, end: &End, toplevel: &StorePath) -> bool {
    let boots_it = end.outcome.is_success() && end.boot.as_deref() == Some(toplevel.as_str());
    match policy {
        _ if !boots_it => false,
        Reboot::Never => false,
        Reboot::Always => true,
        Reboot::IfNeeded => {
            end.system != end.boot || end.needs_reboot.as_ref().is_some_and(|p| !p.is_empty())
        }
    }
}

/// Pure: `Err(why)` unless the host booted and runs `toplevel`.
pub fn came_back_in(facts: &Facts, toplevel: &StorePath) -> Result<(), String> {
    let name = |p: &Option<String>| p.clone().unwrap_or_else(|| "nothing".into());
    let (booted, current) = (name(&facts.booted), name(&facts.current));
    if booted != toplevel.as_str() {
        return Err(format!(
            "it rebooted, but came back in {booted} instead of {toplevel} (it runs {current}): the \
             bootloader did not boot the new entry; inspect its boot entries and the system profile \
             (`nix-env -p /nix/var/nix/profiles/system --list-generations`)"
        ));
    }
    if current != toplevel.as_str() {
        return Err(format!(
            "it rebooted into {toplevel}, but runs {current}: something switched it after the boot"
        ));
    }
    Ok(())
}

/// How waiting for the host to come back ended.
enum Back {
    /// A new boot, with its id.
    Up(String),
    /// Still the old boot at the deadline: it did not reboot.
    Stayed,
    /// Not reachable at the deadline; the last error.
    Gone(String),
}

impl HostRun<'_> {
    /// After the run: reboot the host when `--reboot` says so.
    pub(super) async fn reboot_if_asked<H: Host>(&mut self, host: &mut H, mut end: End) -> End {
        let policy = self.ctx.reboot;
        let Some(toplevel) = self.toplevel.clone().filter(|_| policy != Reboot::Never) else {
            return end;
        };
        end.complete(self.facts.as_ref(), Some(&toplevel));
        if !wants_reboot(policy, &end, &toplevel) {
            let boots_it = end.boot.as_deref() == Some(toplevel.as_str());
            if end.outcome.is_success() && boots_it {
                self.note(match end.needs_reboot {
                    Some(_) => "no reboot needed: it runs what it boots (--reboot if-needed)",
                    None => "not rebooting: the host does not say what it booted (no /run/booted-system)",
                });
            }
            return end;
        }
        if self.ctx.interrupt.is_set() {
            self.note("interrupted: not rebooting");
            return end;
        }
        // From here on the host changes: a second Ctrl-C leaves it be.
        self.agent_starts();
        self.reboot(host, end, &toplevel).await
    }

    /// Reboot, wait for the new boot, then check what it runs.
    async fn reboot<H: Host>(&mut self, host: &mut H, end: End, toplevel: &StorePath) -> End {
        self.start(Phase::Reboot);
        let t = self.spec().timeouts;
        let before = match host.boot_id(t.connect.max(5)).await {
            Ok(id) => id,
            Err(e) => return not_rebooted(end, format!("could not read its boot id: {e}")),
        };
        let started = Instant::now();
        let deadline = started + Duration::from_secs(t.reboot);
        if let Err(e) = host.reboot(t.connect.max(10)).await {
            // A refusal leaves the host as it is; a lost answer may not.
            if !matches!(e.reason(Reason::RebootFailed), Reason::Timeout | Reason::Unreachable) {
                return not_rebooted(end, format!("asking it to reboot failed: {e}"));
            }
            self.note(format!("asking it to reboot said: {e}; waiting for it anyway"));
        }
        self.note(format!(
            "rebooting into {toplevel} (boot id {before}); waiting up to {} s for it to come back",
            t.reboot
        ));
        match self.come_back(host, &before, deadline).await {
            Back::Up(id) => {
                let took = started.elapsed().as_secs_f64();
                self.note(format!("back after {took:.1} s (boot id {id})"));
                self.after_reboot(host, end, toplevel, deadline).await
            }
            Back::Stayed => not_rebooted(
                end,
                format!(
                    "it was asked to reboot, but still runs the same boot (boot id {before}) after {} s \
                     (timeouts.reboot); reboot it yourself, or see `journalctl -b` on it",
                    t.reboot
                ),
            ),
            Back::Gone(last) => End::unknown(
                Reason::Timeout,
                format!(
                    "{} did not come back within {} s (timeouts.reboot) of being asked to reboot into \
                     {toplevel} (last: {last}); it may be down, stuck before its network or sshd, or \
                     booting slowly: inspect its console; once it answers, `deploy-flake status {}` \
                     says what it runs and boots",
                    self.name(),
                    t.reboot,
                    self.name()
                ),
            ),
        }
    }

    /// Wait for a new boot id until `deadline`, reconnecting as needed.
    async fn come_back<H: Host>(&self, host: &mut H, before: &str, deadline: Instant) -> Back {
        let connect = self.spec().timeouts.connect.max(1);
        // None: the old boot answered last.
        let mut last: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return last.map_or(Back::Stayed, Back::Gone);
            }
            let secs = connect.min(left.as_secs().max(1));
            match tokio::time::timeout(left, host.boot_id(secs)).await {
                Ok(Ok(id)) if id != before => return Back::Up(id),
                Ok(Ok(_)) => last = None,
                Ok(Err(e)) => {
                    last = Some(e.to_string());
                    if !host.alive().await {
                        match tokio::time::timeout(left, host.reconnect()).await {
                            Ok(Ok(())) => continue,
                            Ok(Err(e)) => last = Some(e.to_string()),
                            Err(_) => last = Some("connecting again did not finish in time".into()),
                        }
                    }
                }
                Err(_) => {
                    last = Some(format!("reading its boot id took over {} s", left.as_secs()))
                }
            }
            let pause = Duration::from_secs(1);
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Back in a new boot: take the lock again, check that it booted and
    /// runs the run's system, then its health.
    async fn after_reboot<H: Host>(
        &mut self,
        host: &mut H,
        end: End,
        toplevel: &StorePath,
        deadline: Instant,
    ) -> End {
        let t = self.spec().timeouts;
        let back = |e: HostError| {
            let msg = format!("it came back from the reboot, but cannot be inspected: {e}");
            End::unknown(e.reason(Reason::Lost), msg)
        };
        match host.lock(&self.ctx.lock_owner, self.ctx.origin.get().await, None, t.lock).await {
            Ok(_) => {}
            Err(e @ HostError::Lock(LockError::Held { .. })) => {
                self.note(format!("after the reboot: {e}; checking the host without the lock"));
            }
            Err(e) => return back(e),
        }
        let facts = match host.facts(toplevel, None, 30).await {
            Ok(f) => f,
            Err(e) => return back(e),
        };
        let verdict = came_back_in(&facts, toplevel);
        let (system, boot) = (facts.current.clone(), facts.boots().map(String::from));
        self.facts = Some(facts);
        if let Err(msg) = verdict {
            return End::deployed_then_failed(Reason::RebootedIntoOld, msg, system, boot);
        }
        let left = deadline.saturating_duration_since(Instant::now()).as_secs();
        if let Err(why) = self.healthy_after_reboot(host, left.max(t.preflight)).await {
            let msg = format!("rebooted into {toplevel}, but {why}");
            return End::deployed_then_failed(Reason::HealthCheck, msg, system, boot);
        }
        End { system, boot, reason: None, message: None, ..end }
    }

    /// System running, no failed unit, the user's health checks.
    async fn healthy_after_reboot<H: Host>(&self, host: &mut H, secs: u64) -> Result<(), String> {
        let health = host.health(secs).await.map_err(|e| format!("its health: {e}"))?;
        if !health.is_running() {
            return Err(health.describe());
        }
        for check in &self.spec().health_checks {
            host.health_check(check).await?;
            self.note(format!("health check passed after the reboot: {}", check.description));
        }
        Ok(())
    }
}

/// It did not reboot: it runs and boots what the run left.
fn not_rebooted(end: End, msg: String) -> End {
    let needs_reboot = end.needs_reboot;
    End {
        needs_reboot,
        ..End::deployed_then_failed(Reason::RebootFailed, msg, end.system, end.boot)
    }
}
