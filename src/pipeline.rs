//! The per-host pipeline: connect, lock, preflight, copy, build,
//! self-check, activate (test), confirm, boot — in that order, each phase
//! bounded by its timeout. The rollback rule of a phase sits next to it.
//!
//! Nothing on a host changes before `activate`; from `activate` on, the
//! on-target agent (a transient systemd unit) owns the outcome: it returns
//! to the previous system unless the deployer confirms over a fresh login.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::{Event, HostReport, Outcome, Phase, Sink};
use crate::inventory::BuildOn;
use crate::nix::{self, AgentStatus, RunDir, StorePath};
use crate::remote::{Cmd, Destination, Remote, RemoteError};
use crate::select::Target;

/// What every host of a run shares.
#[derive(Clone)]
pub struct Context {
    pub run_id: String,
    /// The flake reference as given on the command line.
    pub flake: String,
    /// Re-activate hosts that already run the built system.
    pub force: bool,
    pub skip_preflight: bool,
    /// `--pre-activate-script`: overrides every host's `selfCheck`.
    pub self_check: Option<String>,
    /// Who holds the lock, shown to a concurrent deployer.
    pub lock_owner: String,
    pub mode: Mode,
    /// Set on Ctrl-C: hosts that have not started activating stop unchanged.
    pub interrupted: Arc<AtomicBool>,
    pub sink: Sink,
}

/// What a run does to each host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Build the flake's configuration and switch to it.
    Deploy,
    /// Return to an earlier generation of the system profile (the one before
    /// the current, or the given one), through the same test/confirm/boot.
    Rollback { to_generation: Option<u32> },
}

/// Deploy one host and say how it ended. Never panics on remote trouble:
/// every failure becomes a report.
pub async fn deploy(target: &Target, ctx: &Context) -> HostReport {
    let mut h = HostRun {
        target,
        ctx,
        started: Instant::now(),
        phase: None,
        phase_open: false,
        phase_started: Instant::now(),
        agent_started: false,
    };
    let result = h.run().await;
    h.finish(result)
}

/// How a host run ended, before it becomes a report.
struct End {
    outcome: Outcome,
    system: Option<String>,
    message: Option<String>,
}

impl End {
    fn ok(outcome: Outcome, system: &StorePath) -> End {
        End { outcome, system: Some(system.to_string()), message: None }
    }
    /// Stopped before anything on the host changed.
    fn unchanged(msg: impl Into<String>) -> End {
        End { outcome: Outcome::Failed, system: None, message: Some(msg.into()) }
    }
}

struct HostRun<'a> {
    target: &'a Target,
    ctx: &'a Context,
    started: Instant,
    phase: Option<Phase>,
    phase_open: bool,
    phase_started: Instant,
    /// The on-target agent was started: it owns the run's GC root.
    agent_started: bool,
}

impl<'a> HostRun<'a> {
    fn name(&self) -> &str {
        &self.target.name
    }

    fn emit(&self, e: Event) {
        (self.ctx.sink)(e)
    }

    fn start(&mut self, phase: Phase) {
        self.end_phase(true);
        self.phase = Some(phase);
        self.phase_open = true;
        self.phase_started = Instant::now();
        self.emit(Event::PhaseStarted { host: self.name().to_string(), phase });
    }

    fn end_phase(&mut self, ok: bool) {
        if let (Some(p), true) = (self.phase, self.phase_open) {
            self.phase_open = false;
            self.emit(Event::PhaseFinished {
                host: self.name().to_string(),
                phase: p,
                ok,
                duration: self.phase_started.elapsed(),
            });
        }
    }

    fn note(&self, text: impl Into<String>) {
        self.emit(Event::Note { host: self.name().to_string(), text: text.into() });
    }

    /// A line sink for the current phase.
    fn lines(&self) -> impl FnMut(&str) + Send + 'static {
        let sink = self.ctx.sink.clone();
        let host = self.name().to_string();
        let phase = self.phase.unwrap_or(Phase::Connect);
        move |l: &str| sink(Event::Output { host: host.clone(), phase, line: l.to_string() })
    }

    fn finish(mut self, end: End) -> HostReport {
        self.end_phase(end.outcome.is_success());
        let report = HostReport {
            host: self.name().to_string(),
            outcome: end.outcome,
            phase: self.phase,
            duration: self.started.elapsed(),
            system: end.system,
            message: end.message,
        };
        self.emit(Event::HostFinished { report: report.clone() });
        report
    }

    async fn run(&mut self) -> End {
        let spec = &self.target.spec;
        let run = RunDir::new(&self.ctx.run_id);

        // 1. connect
        self.start(Phase::Connect);
        let mut remote = match Remote::connect(Destination::from_spec(spec)).await {
            Ok(r) => r,
            Err(e) => return End::unchanged(e.to_string()),
        };
        let end = self.with_remote(&mut remote, &run).await;
        // Once started, the agent drops the run's GC root itself (the profile
        // holds the system then, or nothing needs to).
        if !self.agent_started {
            let _ = nix::drop_root(&remote, &run, 10).await;
        }
        remote.close().await;
        end
    }

    async fn with_remote(&mut self, remote: &mut Remote, run: &RunDir) -> End {
        let spec = &self.target.spec;
        let t = spec.timeouts;

        // 2. lock
        self.start(Phase::Lock);
        if let Err(e) = nix::install_agent(remote, run, t.lock).await {
            return End::unchanged(e.to_string());
        }
        let lock = match remote.hold_lock(&run.agent, &self.ctx.lock_owner, t.lock).await {
            Ok(l) => l,
            Err(e) => return End::unchanged(e.to_string()),
        };
        if !lock.busy.is_empty() {
            return End::unchanged(format!(
                "an activation from another run is still in progress ({}); it confirms or rolls back by itself, retry after it ends",
                lock.busy.join(", ")
            ));
        }

        // 3. preflight: a host that is not healthy now is not touched.
        if !self.ctx.skip_preflight {
            self.start(Phase::Preflight);
            match nix::system_health(remote, run, t.preflight).await {
                Ok(h) if h.is_running() => {}
                Ok(h) => {
                    return End::unchanged(format!(
                        "preflight: {}; fix the host or pass --skip-preflight",
                        h.describe()
                    ))
                }
                Err(e) => return End::unchanged(format!("preflight: {e}")),
            }
        }

        // 4. copy and 5. build (or, for a rollback, the generation to return to)
        let (toplevel, generation) = match self.ctx.mode {
            Mode::Deploy => match self.copy_and_build(remote, run).await {
                Ok(p) => {
                    self.note(format!("built {p}"));
                    (p, None)
                }
                Err(end) => return end,
            },
            Mode::Rollback { to_generation } => {
                match nix::pick_generation(remote, to_generation, 30).await {
                    Ok((n, p)) => {
                        self.note(format!("returning to generation {n}: {p}"));
                        (p, Some(n))
                    }
                    Err(e) => return End::unchanged(format!("rollback: {e}")),
                }
            }
        };
        let configured = self.ctx.self_check.clone().or_else(|| spec.self_check.clone());
        let facts = match nix::facts(remote, run, &toplevel, configured.as_deref(), 30).await {
            Ok(f) => f,
            Err(e) => return End::unchanged(e.to_string()),
        };
        if !facts.switchable {
            return End::unchanged(format!(
                "{toplevel} has no bin/switch-to-configuration: configuration `{}` is not a NixOS system",
                spec.configuration
            ));
        }
        if !facts.systemd {
            return End::unchanged("the target does not run systemd (no /run/systemd/system)");
        }

        // Already there? Then nothing is activated.
        let running_it = facts.current.as_deref() == Some(toplevel.as_str());
        if running_it && !self.ctx.force {
            if facts.profile.as_deref() == Some(toplevel.as_str()) {
                self.note("already running and booting this system");
                return End::ok(Outcome::UpToDate, &toplevel);
            }
            // Running it, but the boot entry was never written (e.g. an
            // earlier deployer died after confirmation): finish the job.
            self.note("already running this system; writing the boot entry");
            return self.boot(remote, run, &toplevel, generation, 0).await;
        }

        // 6. self-check: a failing check stops the host unchanged. A
        // rollback returns to a system that already ran here: no check.
        if generation.is_none() {
            if let Err(end) = self
                .self_check(remote, configured.as_deref(), facts.self_check.as_deref(), &toplevel)
                .await
            {
                return end;
            }
        }

        // Ctrl-C: a host that has not started activating stays as it is.
        if self.ctx.interrupted.load(Ordering::SeqCst) {
            return End {
                outcome: Outcome::Cancelled,
                system: None,
                message: Some("interrupted before activation; nothing changed".into()),
            };
        }

        // 7. activate: from here on the agent owns the outcome.
        self.activate_confirm_boot(remote, run, &toplevel, generation).await
    }

    /// Run the self-check: the configured path (which must exist), or the
    /// system's own `pre-activate-safety-checks` when it has one.
    async fn self_check(
        &mut self,
        remote: &mut Remote,
        configured: Option<&str>,
        found: Option<&str>,
        toplevel: &StorePath,
    ) -> Result<(), End> {
        let t = self.target.spec.timeouts;
        self.start(Phase::SelfCheck);
        let Some(script) = found else {
            if let Some(rel) = configured {
                return Err(End::unchanged(format!(
                    "self-check: {rel} is not an executable inside {toplevel}"
                )));
            }
            self.note("no self-check in this system");
            return Ok(());
        };
        let mut lines = self.lines();
        if let Err(e) = nix::self_check(remote, script, t.self_check, &mut lines).await {
            return Err(End::unchanged(format!("self-check failed, nothing activated: {e}")));
        }
        Ok(())
    }

    async fn activate_confirm_boot(
        &mut self,
        remote: &mut Remote,
        run: &RunDir,
        toplevel: &StorePath,
        generation: Option<u32>,
    ) -> End {
        let t = self.target.spec.timeouts;
        let spec = &self.target.spec;

        // 7. activate: from here on the agent owns the outcome.
        self.start(Phase::Activate);
        let args = vec![
            run.dir.clone(),
            toplevel.to_string(),
            t.activate.to_string(),
            confirm_window(spec).to_string(),
            if spec.magic_rollback { "1".into() } else { "0".into() },
        ];
        if let Err(e) = nix::start_agent(remote, run, "activate", &args, 30).await {
            return End::unchanged(format!("activate: {e}"));
        }
        self.agent_started = true;
        let mut seen = 0usize;
        let status = match self
            .settle(remote, run, &mut seen, None, Duration::from_secs(t.activate + 15))
            .await
        {
            Ok(s) => s,
            Err(why) => {
                // The activation outlived its timeout from our side: ask
                // the agent to stop it and roll back, then wait for that.
                let _ = nix::signal_agent(remote, run, "abort", &why, 30).await;
                match self
                    .settle(
                        remote,
                        run,
                        &mut seen,
                        None,
                        Duration::from_secs(t.activate + t.confirm + 60),
                    )
                    .await
                {
                    Ok(s) => s,
                    Err(e) => return self.lost(run, &e),
                }
            }
        };
        if status.state != "awaiting-confirmation" {
            return self.agent_end(run, &status);
        }

        // 8. confirm: healthy, and a brand-new login works.
        self.start(Phase::Confirm);
        let verdict = self.check_and_confirm(remote, run).await;
        if let Err(reason) = &verdict {
            self.note(format!("not confirming: {reason}"));
            // Tell the agent now when we can; otherwise its own timeout does.
            let _ = nix::signal_agent(remote, run, "abort", reason, 10).await;
        }
        let status = match self
            .settle(
                remote,
                run,
                &mut seen,
                Some("awaiting-confirmation"),
                Duration::from_secs(confirm_window(spec) + t.activate + 60),
            )
            .await
        {
            Ok(s) => s,
            Err(e) => return self.lost(run, &e),
        };
        if status.state != "confirmed" {
            return self.agent_end(run, &status);
        }

        // 9. boot: only a confirmed system becomes the boot entry.
        self.boot(remote, run, toplevel, generation, seen).await
    }

    /// Copy the flake and build the system on the target, or build here and
    /// copy the closure (`buildOn = "local"`). Nothing on the host changes.
    async fn copy_and_build(
        &mut self,
        remote: &mut Remote,
        run: &RunDir,
    ) -> Result<StorePath, End> {
        let spec = &self.target.spec;
        let t = spec.timeouts;
        let p = match spec.build_on {
            BuildOn::Target => {
                self.start(Phase::Copy);
                let mut lines = self.lines();
                let source =
                    match nix::copy_flake(remote, &self.ctx.flake, t.copy, &mut lines).await {
                        Ok(s) => s,
                        Err(e) => return Err(End::unchanged(format!("copy: {e}"))),
                    };
                self.start(Phase::Build);
                let mut lines = self.lines();
                match nix::build_on_target(
                    remote,
                    &source,
                    &spec.configuration,
                    run,
                    t.build,
                    &mut lines,
                )
                .await
                {
                    Ok(p) => p,
                    Err(e) => return Err(End::unchanged(format!("build: {e}"))),
                }
            }
            BuildOn::Local => {
                self.start(Phase::Build);
                let gc = match tempfile::Builder::new().prefix("deploy-flake-root.").tempdir() {
                    Ok(d) => d,
                    Err(e) => return Err(End::unchanged(format!("build: {e}"))),
                };
                let mut lines = self.lines();
                let p = match nix::build_locally(
                    &self.ctx.flake,
                    &spec.configuration,
                    &gc.path().join("result"),
                    t.build,
                    &mut lines,
                )
                .await
                {
                    Ok(p) => p,
                    Err(e) => return Err(End::unchanged(format!("build: {e}"))),
                };
                self.start(Phase::Copy);
                let mut lines = self.lines();
                if let Err(e) = nix::copy_closure(remote, &p, t.copy, &mut lines).await {
                    return Err(End::unchanged(format!("copy: {e}")));
                }
                if let Err(e) = nix::add_root(remote, &p, run, t.copy).await {
                    return Err(End::unchanged(format!("copy: {e}")));
                }
                p
            }
        };
        Ok(p)
    }

    /// Health checks over the master, then the confirmation over a fresh login.
    async fn check_and_confirm(&self, remote: &Remote, run: &RunDir) -> Result<(), String> {
        let t = self.target.spec.timeouts;
        let health = nix::system_health(remote, run, t.confirm.max(5))
            .await
            .map_err(|e| format!("health check: {e}"))?;
        if !health.is_running() {
            return Err(format!("health check: {}", health.describe()));
        }
        for check in &self.target.spec.health_checks {
            crate::health::run_check(remote, check).await?;
            self.note(format!("health check passed: {}", check.description));
        }
        let cmd = Cmd::new(["touch", &run.file("confirmed")]).secs(t.connect + t.confirm);
        match remote.fresh_login(&cmd).await {
            Ok(out) if out.success() => Ok(()),
            Ok(out) => Err(format!("a fresh ssh login could not confirm: {}", out.tail())),
            Err(e) => Err(format!("a fresh ssh login failed: {e}")),
        }
    }

    /// `seen`: the lines of the run's log already shown (the boot log
    /// continues the activation's).
    async fn boot(
        &mut self,
        remote: &mut Remote,
        run: &RunDir,
        toplevel: &StorePath,
        generation: Option<u32>,
        mut seen: usize,
    ) -> End {
        self.start(Phase::Boot);
        let t = self.target.spec.timeouts;
        let mut args = vec![run.dir.clone(), toplevel.to_string()];
        args.extend(generation.map(|g| g.to_string()));
        if let Err(e) = nix::start_agent(remote, run, "boot", &args, 30).await {
            return self.boot_failed(toplevel, &e.to_string());
        }
        self.agent_started = true;
        // Until the boot agent writes its first state, the activation's
        // "confirmed" is still there: keep waiting through it.
        match self
            .settle(remote, run, &mut seen, Some("confirmed"), Duration::from_secs(t.boot))
            .await
        {
            Ok(s) if s.state == "booted" => End::ok(Outcome::Deployed, toplevel),
            Ok(s) => self.boot_failed(toplevel, &format!("{} {}", s.state, s.reason)),
            Err(e) => self.boot_failed(toplevel, &e),
        }
    }

    fn boot_failed(&self, toplevel: &StorePath, why: &str) -> End {
        End {
            outcome: Outcome::Unknown,
            system: Some(toplevel.to_string()),
            message: Some(format!(
                "the new system runs, but writing its boot entry failed ({why}); inspect with \
                 `readlink -f /nix/var/nix/profiles/system` and re-run deploy-flake to finish the boot step"
            )),
        }
    }

    /// Map a final agent state to the host's end.
    fn agent_end(&self, run: &RunDir, s: &AgentStatus) -> End {
        let (outcome, message) = agent_outcome(s);
        if outcome == Outcome::RolledBack {
            self.emit(Event::RolledBack {
                host: self.name().to_string(),
                reason: s.reason.clone(),
            });
        }
        let message = if outcome == Outcome::Unknown {
            format!("{message}; inspect with `cat {}/log` and `readlink /run/current-system` on the host", run.dir)
        } else {
            message
        };
        // Rolled back: the host runs what it ran before.
        let system = if outcome == Outcome::RolledBack { s.previous.clone() } else { None };
        End { outcome, system, message: Some(message) }
    }

    fn lost(&self, run: &RunDir, why: &str) -> End {
        End {
            outcome: Outcome::Unknown,
            system: None,
            message: Some(format!(
                "lost track of the activation ({why}); the host confirms or rolls back by itself — inspect \
                 `{}/status` and `readlink /run/current-system` on the host",
                run.dir
            )),
        }
    }

    /// Follow the agent until it needs us or is done, re-attaching after a
    /// lost connection, all within `limit`.
    async fn settle(
        &self,
        remote: &mut Remote,
        run: &RunDir,
        seen: &mut usize,
        also_wait: Option<&str>,
        limit: Duration,
    ) -> Result<AgentStatus, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("the agent did not settle within {} s", limit.as_secs()));
            }
            let mut lines = self.lines();
            let watched =
                nix::watch_agent(remote, run, seen, also_wait, left.as_secs().max(1), &mut lines)
                    .await;
            match watched {
                Ok(status) => return Ok(status),
                Err(RemoteError::Timeout { .. }) => {
                    return Err(format!(
                        "the activation did not finish within {} s",
                        limit.as_secs()
                    ))
                }
                Err(e) => {
                    if !self.reattach(remote, deadline, &e.to_string()).await {
                        return Err(format!("connection lost and not regained: {e}"));
                    }
                }
            }
        }
    }

    /// Reconnect until `deadline`. True when the master is back.
    async fn reattach(&self, remote: &mut Remote, deadline: Instant, why: &str) -> bool {
        if remote.check().await {
            // The master is fine; the command itself failed. Retry once after a pause.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Instant::now() < deadline;
        }
        self.note(format!("connection lost ({why}); reconnecting"));
        while Instant::now() < deadline {
            match remote.reconnect().await {
                Ok(()) => {
                    self.note("reconnected; re-attaching to the activation");
                    return true;
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        false
    }
}

/// How long the agent waits for the confirmation: the confirm timeout plus
/// the time the user's health checks may take.
pub fn confirm_window(spec: &crate::inventory::HostSpec) -> u64 {
    spec.timeouts.confirm + spec.health_checks.iter().map(|c| c.timeout + c.period).sum::<u64>()
}

/// What a final agent state means for the host. Pure, so it is tested
/// table-style.
pub fn agent_outcome(s: &AgentStatus) -> (Outcome, String) {
    match s.state.as_str() {
        "rolled-back" => (Outcome::RolledBack, format!("rolled back: {}", s.reason)),
        "failed" => (
            Outcome::Failed,
            format!("activation failed and magicRollback is off, so the host runs the new system unconfirmed; its boot entry is unchanged: {}", s.reason),
        ),
        "rollback-failed" => (Outcome::Unknown, format!("ROLLBACK FAILED: {}", s.reason)),
        "confirmed" | "booted" => (Outcome::Deployed, String::new()),
        other => (Outcome::Unknown, format!("the agent ended in an unexpected state `{other} {}`", s.reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(state: &str, reason: &str) -> AgentStatus {
        AgentStatus { state: state.into(), reason: reason.into(), previous: None }
    }

    #[test]
    fn agent_states_map_to_outcomes() {
        let table = [
            (
                "rolled-back",
                "no confirmation within 30s",
                Outcome::RolledBack,
                "rolled back: no confirmation within 30s",
            ),
            ("rollback-failed", "x", Outcome::Unknown, "ROLLBACK FAILED: x"),
            (
                "failed",
                "switch-to-configuration test exited with 4 (a unit failed)",
                Outcome::Failed,
                "activation failed and magicRollback is off",
            ),
            ("activating", "", Outcome::Unknown, "unexpected state `activating"),
        ];
        for (state, reason, outcome, msg) in table {
            let (o, m) = agent_outcome(&st(state, reason));
            assert_eq!(o, outcome, "{state}");
            assert!(m.contains(msg), "{state}: {m}");
        }
    }
}
