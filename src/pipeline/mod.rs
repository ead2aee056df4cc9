//! The per-host pipeline: connect, lock, preflight, copy, build,
//! self-check, activate (test), confirm, boot — in that order, each phase
//! bounded by its timeout. The rollback rule of a phase sits next to it.
//!
//! Nothing on a host changes before `activate`; from `activate` on, the
//! on-target agent owns the outcome: it returns to the previous system
//! unless the deployer confirms over a fresh login. The pipeline talks to
//! the host only through [`Host`], so every branch runs against a fake
//! host in the unit tests.

mod activate;
mod end;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use end::{agent_end, next_step, End, Next};

use crate::events::{Event, HostReport, Outcome, Phase, Reason, Sink};
use crate::host::{Host, HostError};
use crate::inventory::{BuildOn, HostSpec};
use crate::nix::StorePath;
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
pub async fn deploy<H: Host>(target: &Target, ctx: &Context, host: H) -> HostReport {
    let mut run = HostRun {
        target,
        ctx,
        started: Instant::now(),
        phase: None,
        phase_open: false,
        phase_started: Instant::now(),
        agent_started: false,
    };
    let end = run.run(host).await;
    run.finish(end)
}

/// The system a run moves a host to.
struct Wanted {
    toplevel: StorePath,
    /// A rollback: the generation of the system profile to return to.
    generation: Option<u32>,
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

    fn spec(&self) -> &'a HostSpec {
        &self.target.spec
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
            let duration = self.phase_started.elapsed();
            self.emit(Event::PhaseFinished {
                host: self.name().to_string(),
                phase: p,
                ok,
                duration,
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
        if end.outcome == Outcome::RolledBack {
            self.emit(Event::RolledBack {
                host: self.name().to_string(),
                reason: end.message.clone().unwrap_or_default(),
                cause: end.reason,
            });
        }
        let report = HostReport {
            host: self.name().to_string(),
            outcome: end.outcome,
            phase: self.phase,
            duration: self.started.elapsed(),
            system: end.system,
            reason: end.reason,
            message: end.message,
        };
        self.emit(Event::HostFinished { report: report.clone() });
        report
    }

    async fn run<H: Host>(&mut self, mut host: H) -> End {
        self.start(Phase::Connect);
        if let Err(e) = host.connect().await {
            return End::unchanged(e.reason(Reason::Unreachable), e.to_string());
        }
        let end = match self.until_activation(&mut host).await {
            Ok(wanted) => self.activate_confirm_boot(&mut host, &wanted).await,
            Err(end) => end,
        };
        // Once started, the agent drops the run's GC root itself (the
        // profile holds the system then, or nothing needs to).
        if !self.agent_started {
            let _ = host.drop_root(10).await;
        }
        host.close().await;
        end
    }

    /// Everything before the host changes: lock, preflight, the system to
    /// activate, self-check. `Err` is how the host ended (unchanged, up to
    /// date, or with only its boot entry written).
    async fn until_activation<H: Host>(&mut self, host: &mut H) -> Result<Wanted, End> {
        let t = self.spec().timeouts;
        self.start(Phase::Lock);
        let busy = host.lock(&self.ctx.lock_owner, t.lock).await;
        let busy = busy.map_err(failed(Reason::NotASystem))?;
        if !busy.is_empty() {
            return Err(End::unchanged(
                Reason::Busy,
                format!(
                    "an activation from another run is still in progress ({}); it confirms or rolls \
                     back by itself, retry after it ends",
                    busy.join(", ")
                ),
            ));
        }
        if !self.ctx.skip_preflight {
            self.preflight(host).await?;
        }
        let wanted = self.wanted_system(host).await?;
        let self_check = self.spec().self_check.clone();
        let facts = host
            .facts(&wanted.toplevel, self_check.as_deref(), 30)
            .await
            .map_err(failed(Reason::Internal))?;
        if !facts.switchable {
            let msg = format!(
                "{} has no bin/switch-to-configuration: configuration `{}` is not a NixOS system",
                wanted.toplevel,
                self.spec().configuration
            );
            return Err(End::unchanged(Reason::NotASystem, msg));
        }
        if !facts.systemd {
            let msg = "the target does not run systemd (no /run/systemd/system)";
            return Err(End::unchanged(Reason::NotASystem, msg));
        }
        match next_step(&facts, &wanted.toplevel, self.ctx.force) {
            Next::UpToDate => {
                self.note("already running and booting this system");
                return Err(End::ok(Outcome::UpToDate, &wanted.toplevel));
            }
            Next::FinishBoot => {
                // Running it, but the boot entry was never written (e.g. an
                // earlier deployer died after confirmation): finish the job.
                self.note("already running this system; writing the boot entry");
                return Err(self.boot(host, &wanted, 0).await);
            }
            Next::Activate => {}
        }
        // A rollback returns to a system that already ran here: no check.
        if wanted.generation.is_none() {
            self.self_check(host, self_check.as_deref(), facts.self_check.as_deref(), &wanted)
                .await?;
        }
        if self.ctx.interrupted.load(Ordering::SeqCst) {
            let msg = "interrupted before activation; nothing changed";
            return Err(End {
                outcome: Outcome::Cancelled,
                ..End::unchanged(Reason::Cancelled, msg)
            });
        }
        Ok(wanted)
    }

    /// A host that is not healthy now is not touched.
    async fn preflight<H: Host>(&mut self, host: &mut H) -> Result<(), End> {
        self.start(Phase::Preflight);
        let h = host.health(self.spec().timeouts.preflight).await;
        let h =
            h.map_err(|e| End::unchanged(e.reason(Reason::Preflight), format!("preflight: {e}")))?;
        if h.is_running() {
            return Ok(());
        }
        let msg = format!("preflight: {}; fix the host or pass --skip-preflight", h.describe());
        Err(End::unchanged(Reason::Preflight, msg))
    }

    /// Copy and build (or, for a rollback, find the generation to return to).
    async fn wanted_system<H: Host>(&mut self, host: &mut H) -> Result<Wanted, End> {
        match self.ctx.mode {
            Mode::Deploy => {
                let toplevel = self.copy_and_build(host).await?;
                self.note(format!("built {toplevel}"));
                Ok(Wanted { toplevel, generation: None })
            }
            Mode::Rollback { to_generation } => {
                let (n, toplevel) = host.generation(to_generation, 30).await.map_err(|e| {
                    End::unchanged(e.reason(Reason::Internal), format!("rollback: {e}"))
                })?;
                self.note(format!("returning to generation {n}: {toplevel}"));
                Ok(Wanted { toplevel, generation: Some(n) })
            }
        }
    }

    /// Copy the flake and build the system on the target, or build here and
    /// copy the closure (`buildOn = "local"`). Nothing on the host changes.
    async fn copy_and_build<H: Host>(&mut self, host: &mut H) -> Result<StorePath, End> {
        let (flake, cfg) = (&self.ctx.flake, &self.target.spec.configuration);
        let t = self.spec().timeouts;
        match self.spec().build_on {
            BuildOn::Target => {
                self.start(Phase::Copy);
                let source = host.copy_flake(flake, t.copy, &mut self.lines()).await;
                let source = source.map_err(failed_in("copy", Reason::Copy))?;
                self.start(Phase::Build);
                let built = host.build(&source, cfg, t.build, &mut self.lines()).await;
                built.map_err(failed_in("build", Reason::Build))
            }
            BuildOn::Local => {
                self.start(Phase::Build);
                let built = host.build_local(flake, cfg, t.build, &mut self.lines()).await;
                let path = built.map_err(failed_in("build", Reason::Build))?;
                self.start(Phase::Copy);
                let copied = host.copy_closure(&path, t.copy, &mut self.lines()).await;
                copied.map_err(failed_in("copy", Reason::Copy))?;
                Ok(path)
            }
        }
    }

    /// Run the self-check: the configured path (which must exist), or the
    /// system's own `pre-activate-safety-checks` when it has one.
    async fn self_check<H: Host>(
        &mut self,
        host: &mut H,
        configured: Option<&str>,
        found: Option<&str>,
        wanted: &Wanted,
    ) -> Result<(), End> {
        self.start(Phase::SelfCheck);
        let Some(script) = found else {
            if let Some(rel) = configured {
                let msg =
                    format!("self-check: {rel} is not an executable inside {}", wanted.toplevel);
                return Err(End::unchanged(Reason::SelfCheck, msg));
            }
            self.note("no self-check in this system");
            return Ok(());
        };
        let result =
            host.self_check(script, self.spec().timeouts.self_check, &mut self.lines()).await;
        result.map_err(|e| {
            let msg = format!("self-check failed, nothing activated: {e}");
            End::unchanged(e.reason(Reason::SelfCheck), msg)
        })
    }
}

/// A failure before anything changed, with the phase's own reason.
fn failed(reason: Reason) -> impl Fn(HostError) -> End {
    move |e| End::unchanged(e.reason(reason), e.to_string())
}

/// The same, with the step named in the message.
fn failed_in(step: &'static str, reason: Reason) -> impl Fn(HostError) -> End {
    move |e| End::unchanged(e.reason(reason), format!("{step}: {e}"))
}

/// How long the agent waits for the confirmation: the confirm timeout plus
/// the time the user's health checks may take.
pub fn confirm_window(spec: &HostSpec) -> u64 {
    let checks: u64 = spec.health_checks.iter().map(|c| c.timeout.saturating_add(c.period)).sum();
    spec.timeouts.confirm.saturating_add(checks)
}
