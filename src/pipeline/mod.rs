//! The per-host pipeline: connect, lock, preflight, copy, build,
//! self-check, activate (test), confirm, boot, and with `--reboot` reboot —
//! in that order, each phase bounded by its timeout. The rollback rule of a
//! phase sits next to it.
//!
//! Nothing on a host changes before `activate` (or, for `--goal boot`,
//! `boot`); from then on the on-target agent owns the outcome: it returns
//! to the previous system unless the deployer confirms over a fresh login.
//! Until then Ctrl-C stops the host at once, whatever it is doing. The
//! pipeline talks to the host only through [`Host`], so every branch runs
//! against a fake host in the unit tests.

mod activate;
#[cfg(test)]
mod drive;
mod end;
#[cfg(test)]
pub(crate) mod fake;
mod lock;
mod origin;
mod prepare;
mod reboot;
mod soak;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_contract;
#[cfg(test)]
mod tests_elsewhere;
#[cfg(test)]
mod tests_keys;
#[cfg(test)]
mod tests_reboot;
#[cfg(test)]
mod tests_truth;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use end::{agent_end, next_step, End, Next};
pub use origin::{host_name, new_run_id, Identity, Origin};
pub use reboot::{came_back_in, wants_reboot, Reboot};
pub use soak::soak_check;

use crate::agent::{Facts, SwitchEnv};
use crate::events::{Event, HostReport, Outcome, Phase, Reason, Sink};
use crate::fleet::HostSpec;
use crate::host::{Host, HostError};
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
    /// Who deploys from which flake, kept on each host (`<key> <value>`
    /// lines: by, flake, revision, goal).
    pub origin: Arc<Origin>,
    pub mode: Mode,
    pub goal: Goal,
    /// `--reboot`: when to reboot a host into its new boot entry.
    pub reboot: Reboot,
    /// What switch-to-configuration is told (`--no-check`, `--install-bootloader`).
    pub switch_env: SwitchEnv,
    /// Ctrl-C: hosts that have not started to change stop at once, unchanged.
    pub interrupt: Interrupt,
    /// `--ask`: what each host may be given, as shown and approved.
    pub approved: Option<Arc<std::collections::BTreeMap<String, Approved>>>,
    /// A soak follows: a confirmed host keeps the previous content of the
    /// keys it replaced until the soak's verdict (a host sent back gets it
    /// back).
    pub keep_keys: bool,
    /// How many hosts have an agent at work (activating, confirming,
    /// booting): a second Ctrl-C leaves those in the agents' hands.
    pub changing: Arc<AtomicUsize>,
    pub sink: Sink,
}

/// `--ask`: a host's change as it was shown and approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approved {
    /// The system it may be given.
    pub system: String,
    /// What it ran when it was shown: a host that runs something else by
    /// then is not touched (its change is no longer the one shown).
    pub running: Option<String>,
}

/// What a run does to each host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Build the flake's configuration and switch to it.
    Deploy,
    /// Return to an earlier generation of the system profile (the one before
    /// the current, or the given one), through the same test/confirm/boot.
    Rollback { to_generation: Option<u32> },
    /// Return to this system (the one a host ran before a run that it then
    /// failed the soak of), through the same test/confirm/boot; and to the
    /// keys it had before that run (`from_run`).
    Revert { to: StorePath, from_run: String },
}

/// How far a run takes each host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Activate, confirm, then write the boot entry.
    Switch,
    /// Activate and confirm; the boot entry stays as it is.
    Test,
    /// Write the boot entry only; activate nothing (takes effect at the
    /// next reboot).
    Boot,
}

impl Goal {
    /// Every goal.
    pub const ALL: [Goal; 3] = [Goal::Switch, Goal::Test, Goal::Boot];

    /// Its wire word: `--goal`'s value, and the `goal` a host keeps of the
    /// run that deploys it (`deploy-flake status` shows it).
    pub fn as_str(self) -> &'static str {
        match self {
            Goal::Switch => "switch",
            Goal::Test => "test",
            Goal::Boot => "boot",
        }
    }
}

/// A flag that Ctrl-C raises, and that can be awaited.
#[derive(Clone)]
pub struct Interrupt(tokio::sync::watch::Receiver<bool>);

/// Raises an [`Interrupt`].
pub struct InterruptHandle(tokio::sync::watch::Sender<bool>);

impl Interrupt {
    pub fn new() -> (InterruptHandle, Interrupt) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (InterruptHandle(tx), Interrupt(rx))
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once the flag is raised (never, if it never is).
    pub async fn raised(&mut self) {
        if self.0.wait_for(|set| *set).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl InterruptHandle {
    pub fn raise(&self) {
        let _ = self.0.send(true);
    }
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
        facts: None,
        before: None,
        toplevel: None,
        keys: Vec::new(),
        provenance: Default::default(),
    };
    let end = run.run(host).await;
    run.finish(end)
}

/// The system a run moves a host to.
struct Wanted {
    toplevel: StorePath,
    /// The host's facts, when they came with the build.
    facts: Option<crate::agent::Facts>,
}

struct HostRun<'a> {
    target: &'a Target,
    ctx: &'a Context,
    started: Instant,
    phase: Option<Phase>,
    phase_open: bool,
    phase_started: Instant,
    /// An agent action was started: it owns the run's GC root.
    agent_started: bool,
    /// What the host runs and boots, as last read: before the run changes
    /// anything, or again after a reboot or another switch.
    facts: Option<Facts>,
    /// What the host ran before the run, as first read.
    before: Option<String>,
    /// The system of the run, once known.
    toplevel: Option<StorePath>,
    /// The host's keys, read before anything on it changes.
    keys: Vec<crate::keys::Loaded>,
    /// Where that system was built, and where it came to the host from.
    provenance: crate::build::Provenance,
}

impl<'a> HostRun<'a> {
    fn name(&self) -> &str {
        &self.target.name
    }

    fn spec(&self) -> &'a HostSpec {
        &self.target.spec
    }

    /// The host's timing budget.
    fn budget(&self) -> crate::budget::Budget {
        crate::budget::Budget::of(&self.spec().timeouts, &self.spec().health_checks)
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

    /// One line of the current phase.
    fn output(&self, line: &str) {
        let phase = self.phase.unwrap_or(Phase::Connect);
        self.emit(Event::Output { host: self.name().to_string(), phase, line: line.into() });
    }

    /// From here on an agent changes the host.
    fn agent_starts(&mut self) {
        if !self.agent_started {
            self.agent_started = true;
            self.ctx.changing.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn finish(mut self, mut end: End) -> HostReport {
        self.end_phase(end.outcome.is_success());
        if self.agent_started {
            self.ctx.changing.fetch_sub(1, Ordering::SeqCst);
        }
        if end.outcome == Outcome::RolledBack {
            self.emit(Event::RolledBack {
                host: self.name().to_string(),
                reason: end.message.clone().unwrap_or_default(),
                cause: end.reason,
            });
        }
        end.complete(self.facts.as_ref(), self.toplevel.as_ref());
        if let Some(parts) = end.needs_reboot.as_ref().filter(|p| !p.is_empty()) {
            let what = parts.join(", ");
            self.note(format!("needs a reboot to run what it boots ({what} changed)"));
        }
        let report = HostReport {
            host: self.name().to_string(),
            outcome: end.outcome,
            phase: self.phase,
            duration: self.started.elapsed(),
            system: end.system,
            boot: end.boot,
            needs_reboot: end.needs_reboot,
            before: self.before.take(),
            reason: end.reason,
            message: end.message,
            provenance: self.provenance,
        };
        self.emit(Event::HostFinished { report: report.clone() });
        report
    }

    async fn run<H: Host>(&mut self, mut host: H) -> End {
        self.start(Phase::Connect);
        if let Err(e) = host.connect().await {
            return End::unchanged(e.reason(Reason::Unreachable), e.to_string());
        }
        // Until an agent starts, Ctrl-C stops the host at once: the copy or
        // build in flight is dropped (and its processes with it).
        let mut interrupt = self.ctx.interrupt.clone();
        let prepared = tokio::select! {
            p = self.prepare(&mut host) => p,
            _ = interrupt.raised() => Err(cancelled()),
        };
        let end = match prepared {
            Err(end) => end,
            Ok(_) if interrupt.is_set() => cancelled(),
            Ok((wanted, Next::Activate)) => self.activate_confirm_boot(&mut host, &wanted).await,
            Ok((wanted, _)) => self.boot(&mut host, &wanted).await,
        };
        // Once started, the agent drops the run's GC root itself (the
        // profile holds the system then, or nothing needs to).
        if !self.agent_started {
            let _ = host.drop_root(10).await;
        }
        let end = self.reboot_if_asked(&mut host, end).await;
        host.close().await;
        end
    }
}

fn cancelled() -> End {
    let msg = "interrupted before the host was changed; nothing changed";
    End { outcome: Outcome::Cancelled, ..End::unchanged(Reason::Cancelled, msg) }
}

/// A failure before anything changed, with the phase's own reason.
fn failed(reason: Reason) -> impl Fn(HostError) -> End {
    move |e| End::unchanged(e.reason(reason), e.to_string())
}

/// The same, with the step named in the message.
fn failed_in(step: &'static str, reason: Reason) -> impl Fn(HostError) -> End {
    move |e| End::unchanged(e.reason(reason), format!("{step}: {e}"))
}
