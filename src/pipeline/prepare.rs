//! Everything before the host changes: lock, preflight, the system to move
//! to (copy and build, or the generation to return to), what the host runs
//! now, the self-check and the pre-switch checks. A host that stops here is
//! unchanged.

use super::{failed, failed_in, next_step, End, Goal, HostRun, Mode, Next, Wanted};
use crate::agent::{CheckVerdict, Facts, Health, LockError};
use crate::build::BuiltOn;
use crate::events::{Outcome, Phase, Reason};
use crate::host::{Host, HostError, Progress, SystemError};
use crate::nix::StorePath;

impl HostRun<'_> {
    /// `Ok`: the system and what to do with it (activate it, or write its
    /// boot entry); `Err`: how the host ended (unchanged, or up to date).
    pub(super) async fn prepare<H: Host>(&mut self, host: &mut H) -> Result<(Wanted, Next), End> {
        self.lock_and_preflight(host).await?;
        self.read_keys(host).await?;
        let mut wanted = self.wanted_system(host).await?;
        let self_check = self.spec().self_check.clone();
        let facts = match wanted.facts.take() {
            Some(facts) => facts,
            None => host
                .facts(&wanted.toplevel, self_check.as_deref(), 30)
                .await
                .map_err(failed(Reason::Internal))?,
        };
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
        refuse_if_busy(&facts.busy)?;
        let next = next_step(&facts, &wanted.toplevel, self.ctx.goal, self.ctx.force);
        let found_self_check = facts.self_check.clone();
        let running = facts.current.clone();
        self.before = running.clone();
        self.facts = Some(facts);
        self.toplevel = Some(wanted.toplevel.clone());
        self.check_approved(&wanted.toplevel, running.as_deref())?;
        match next {
            Next::UpToDate => {
                self.upload_keys(host).await?;
                return Err(self.up_to_date(&wanted.toplevel));
            }
            Next::FinishBoot => {
                // Confirmed here earlier, but its boot entry was never
                // written (the deployer died, the bootloader failed).
                self.note("already running this system, confirmed; writing its boot entry");
                return Ok((wanted, next));
            }
            Next::Activate | Next::BootOnly => {}
        }
        // A rollback returns to a system that already ran here: no check.
        let script = match self.ctx.mode {
            Mode::Deploy => {
                self.self_check_script(self_check.as_deref(), found_self_check, &wanted)?
            }
            _ => None,
        };
        if next == Next::Activate && !self.ctx.switch_env.no_check {
            // The self-check and the pre-switch check in one round trip.
            self.pre_switch_check(host, &wanted.toplevel, script.as_deref()).await?;
        } else if let Some(script) = script {
            self.self_check(host, &script).await?;
        }
        Ok((wanted, next))
    }

    /// The host's keys, read here before anything on it changes; a deploy
    /// that activates a system sends them with the activation (a rollback
    /// returns to an older system: it sends none).
    async fn read_keys<H: Host>(&mut self, host: &mut H) -> Result<(), End> {
        let specs = &self.spec().keys;
        if specs.is_empty() || self.ctx.mode != Mode::Deploy {
            return Ok(());
        }
        if self.ctx.goal == Goal::Boot {
            self.note(
                "keys are not written with --goal boot (nothing is activated now): write them \
                 with `deploy-flake keys` once the host runs the new system",
            );
            return Ok(());
        }
        let loaded = host.read_keys(specs).await;
        self.keys =
            loaded.map_err(|e| End::unchanged(Reason::Keys, format!("{e}; nothing changed")))?;
        Ok(())
    }

    /// A host that is up to date gets its keys all the same (they may
    /// have changed without the system): written at once, each atomically.
    async fn upload_keys<H: Host>(&mut self, host: &mut H) -> Result<(), End> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let secs = self.spec().timeouts.activate.min(120);
        let keys = std::mem::take(&mut self.keys);
        let written = host.upload_keys(&keys, secs, &mut self.lines()).await;
        written.map_err(|e| {
            End::unchanged(e.reason(Reason::Keys), format!("writing the keys: {e}"))
        })?;
        self.note(format!("wrote {} key(s); the system is up to date", keys.len()));
        Ok(())
    }

    /// Take the host lock; the preflight's health comes with it.
    async fn lock_and_preflight<H: Host>(&mut self, host: &mut H) -> Result<(), End> {
        let t = self.spec().timeouts;
        self.start(Phase::Lock);
        // The preflight's health comes with the lock.
        let preflight = (!self.ctx.skip_preflight).then_some(t.preflight);
        let owner = &self.ctx.lock_owner;
        let locked = host.lock(owner, self.ctx.origin.get().await, preflight, t.lock).await;
        let locked = match locked {
            // Refused before anything was written, also without a preflight.
            Err(e @ HostError::Lock(LockError::NoSpace { .. })) => {
                self.start(Phase::Preflight);
                return Err(End::unchanged(Reason::Preflight, format!("preflight: {e}")));
            }
            locked => locked.map_err(failed(Reason::LockFailed))?,
        };
        refuse_if_busy(&locked.busy)?;
        match locked.health {
            Some(health) => self.preflight(&health),
            None => Ok(()),
        }
    }

    /// With `--ask`, only the change that was shown may be made: the
    /// system shown, to a host that still runs what it ran then.
    fn check_approved(&self, toplevel: &StorePath, running: Option<&str>) -> Result<(), End> {
        let Some(approved) = &self.ctx.approved else { return Ok(()) };
        let why = match approved.get(self.name()) {
            None => format!("built {toplevel}, but its changes could not be shown"),
            Some(a) if a.system != toplevel.as_str() => {
                format!("built {toplevel}, but the system shown and approved was {}", a.system)
            }
            Some(a) if a.running.as_deref() != running => format!(
                "it ran {} when its changes were shown and runs {} now: the change approved is \
                 not the one it would get",
                a.running.as_deref().unwrap_or("no system"),
                running.unwrap_or("no system")
            ),
            Some(_) => return Ok(()),
        };
        Err(End::unchanged(Reason::NotApproved, format!("{why}; nothing changed")))
    }

    /// Where the goal wants it already.
    fn up_to_date(&self, toplevel: &StorePath) -> End {
        let (runs, boots, what) = match self.ctx.goal {
            Goal::Switch => (Some(toplevel), Some(toplevel), "running and booting this system"),
            Goal::Test => (Some(toplevel), None, "running this system"),
            Goal::Boot => (None, Some(toplevel), "booting this system"),
        };
        self.note(format!("already {what}"));
        End::reached(Outcome::UpToDate, runs, boots)
    }

    /// A host that is not healthy now is not touched.
    fn preflight(&mut self, h: &Health) -> Result<(), End> {
        self.start(Phase::Preflight);
        if h.is_running() {
            return Ok(());
        }
        let msg = format!("preflight: {}; fix the host or pass --skip-preflight", h.describe());
        Err(End::unchanged(Reason::Preflight, msg))
    }

    /// Copy and build (or, for a rollback, find the generation to return to).
    async fn wanted_system<H: Host>(&mut self, host: &mut H) -> Result<Wanted, End> {
        match &self.ctx.mode {
            Mode::Deploy => {
                let (toplevel, facts) = self.copy_and_build(host).await?;
                match self.provenance.built_on {
                    Some(BuiltOn::Prebuilt) => self.note(format!("deploying {toplevel}")),
                    _ => self.note(format!("built {toplevel}")),
                }
                Ok(Wanted { toplevel, facts })
            }
            Mode::Rollback { to_generation } => {
                let (n, toplevel) = host.generation(*to_generation, 30).await.map_err(|e| {
                    End::unchanged(e.reason(Reason::Internal), format!("rollback: {e}"))
                })?;
                self.note(format!("returning to generation {n}: {toplevel}"));
                Ok(Wanted { toplevel, facts: None })
            }
            Mode::Revert { to, .. } => {
                self.note(format!("returning to {to}, the system it ran before this run"));
                Ok(Wanted { toplevel: to.clone(), facts: None })
            }
        }
    }

    /// Copy the flake and build the system on the target (its facts come
    /// with the build), or get it from elsewhere (`crate::build`), each
    /// step its phase. Nothing on the host changes.
    async fn copy_and_build<H: Host>(
        &mut self,
        host: &mut H,
    ) -> Result<(StorePath, Option<Facts>), End> {
        let (ctx, spec) = (self.ctx, self.spec());
        let mut progress = |p: Progress<'_>| match p {
            Progress::BuiltOn(on) => self.provenance.built_on = Some(on),
            Progress::Starts(step) => self.start(step.phase()),
            Progress::Line(line) => self.output(line),
        };
        let self_check = spec.self_check.as_deref();
        let got = host.system(&ctx.flake, spec, self_check, &mut progress).await;
        let system = got.map_err(|e| match e {
            SystemError::Way(e) => End::unchanged(e.reason, e.message),
            SystemError::Failed(step, e) => failed_in(step.name(), step.reason())(e),
        })?;
        if let Some(from) = system.copied_from {
            self.provenance.copied_from = Some(from);
        }
        Ok((system.path, system.facts))
    }

    /// The self-check to run: the configured path (which must exist), or
    /// the system's own `pre-activate-safety-checks` when it has one.
    fn self_check_script(
        &mut self,
        configured: Option<&str>,
        found: Option<String>,
        wanted: &Wanted,
    ) -> Result<Option<String>, End> {
        self.start(Phase::SelfCheck);
        if found.is_none() {
            if let Some(rel) = configured {
                let msg =
                    format!("self-check: {rel} is not an executable inside {}", wanted.toplevel);
                return Err(End::unchanged(Reason::SelfCheck, msg));
            }
            self.note("no self-check in this system");
        }
        Ok(found)
    }

    /// Run the self-check alone.
    async fn self_check<H: Host>(&mut self, host: &mut H, script: &str) -> Result<(), End> {
        let result =
            host.self_check(script, self.spec().timeouts.self_check, &mut self.lines()).await;
        result.map_err(self_check_failed)
    }

    /// `switch-to-configuration check`: the system's pre-switch checks and
    /// switch inhibitors must allow a live switch.
    async fn pre_switch_check<H: Host>(
        &mut self,
        host: &mut H,
        toplevel: &StorePath,
        self_check: Option<&str>,
    ) -> Result<(), End> {
        if self.phase != Some(Phase::SelfCheck) {
            self.start(Phase::SelfCheck);
        }
        let secs = self.spec().timeouts.self_check;
        let env = self.ctx.switch_env;
        let mut out = self.lines();
        let verdict = host.pre_switch_check(toplevel, env, self_check, secs, &mut out).await;
        let failed = failed_in("switch-to-configuration check", Reason::PreSwitchCheck);
        let verdict = verdict.map_err(failed)?;
        match verdict.map_err(self_check_failed)? {
            CheckVerdict::Ok => Ok(()),
            CheckVerdict::Unsupported => {
                self.note("the system has no `switch-to-configuration check`; its own checks run with the activation");
                Ok(())
            }
            CheckVerdict::Busy => Err(End::unchanged(Reason::Busy, BUSY_STC)),
            CheckVerdict::Timeout => Err(End::unchanged(
                Reason::Timeout,
                format!("`switch-to-configuration check` did not finish within {secs} s (timeouts.selfCheck)"),
            )),
            CheckVerdict::Refused => Err(End::unchanged(
                Reason::PreSwitchCheck,
                format!(
                    "the system's pre-switch checks refuse a live switch to {toplevel} (their output is \
                     above); nothing changed. To switch anyway, pass --no-check (NIXOS_NO_CHECK=1); or \
                     deploy it with --goal boot --reboot always (boot into it)"
                ),
            )),
        }
    }
}

fn self_check_failed(e: HostError) -> End {
    let msg = format!("self-check failed, nothing activated: {e}");
    End::unchanged(e.reason(Reason::SelfCheck), msg)
}

const BUSY_STC: &str = "another switch-to-configuration holds its lock (nixos-rebuild or an \
     automatic upgrade is switching this host); nothing changed, retry after it ends";

/// Another switch going on: leave the host alone.
pub(super) fn refuse_if_busy(busy: &[String]) -> Result<(), End> {
    if busy.is_empty() {
        return Ok(());
    }
    Err(End::unchanged(
        Reason::Busy,
        format!(
            "another switch is in progress on the host ({}); it ends by itself, retry after it ends",
            busy.join(", ")
        ),
    ))
}

impl Goal {
    /// Does the goal write the boot entry?
    pub fn boots(self) -> bool {
        matches!(self, Goal::Switch | Goal::Boot)
    }
}
