//! Activate, confirm, boot: the phases in which the host changes. The
//! agent on the host owns the outcome; the deployer follows it (re-attaching
//! after a lost connection), confirms it over a fresh login, or tells it to
//! go back.

use std::time::Duration;

use tokio::time::Instant;

use super::{agent_end, End, Goal, HostRun, Mode, Wanted};
use crate::agent::{AgentAction, AgentState, AgentStatus, Health};
use crate::budget::PROBE_SECS;
use crate::budget::{ABORT_SECS, ABORT_UNCONFIRMED_SECS, FACTS_SECS, KILL_GRACE_SECS};
use crate::events::{Outcome, Phase, Reason};
use crate::host::{Followed, Host, HostError};

impl HostRun<'_> {
    pub(super) async fn activate_confirm_boot<H: Host>(
        &mut self,
        host: &mut H,
        wanted: &Wanted,
    ) -> End {
        let mut seen = 0usize;
        let status = match self.activate(host, wanted, &mut seen).await {
            Ok(s) => s,
            Err(end) => return end,
        };
        if status.state != AgentState::AwaitingConfirmation {
            return self.agent_ended(host, &status, wanted).await;
        }
        let status = match self.confirm(host, &mut seen, status.health).await {
            Ok(s) => s,
            Err(end) => return end,
        };
        // With a boot entry to write, the agent goes on to it once
        // confirmed: a watch may first see it written (or failed).
        let boots = self.ctx.goal.boots();
        let on_to_boot =
            boots && matches!(status.state, AgentState::Booted | AgentState::BootFailed);
        if status.state != AgentState::Confirmed && !on_to_boot {
            return self.agent_ended(host, &status, wanted).await;
        }
        if !boots {
            self.note("confirmed; the boot entry stays as it is (--goal test)");
            return End::reached(Outcome::Deployed, Some(&wanted.toplevel), None);
        }
        self.start(Phase::Boot);
        let status = if on_to_boot {
            Ok(status)
        } else {
            let limit = Duration::from_secs(self.spec().timeouts.boot);
            let confirmed = AgentState::Confirmed;
            self.settle(host, &mut seen, Some(&confirmed), None, limit, None).await
        };
        self.boot_ended(host, status, wanted).await
    }

    /// Start the agent's activation and follow it until it awaits the
    /// confirmation or has ended.
    async fn activate<H: Host>(
        &mut self,
        host: &mut H,
        wanted: &Wanted,
        seen: &mut usize,
    ) -> Result<AgentStatus, End> {
        let spec = self.spec();
        let budget = self.budget();
        self.start(Phase::Activate);
        if let Some(note) = budget.window_note() {
            self.note(note);
        }
        self.still_locked(host, &wanted.toplevel).await?;
        let action = AgentAction::Activate {
            toplevel: wanted.toplevel.clone(),
            activate_secs: budget.activate,
            window_secs: budget.window,
            hard_secs: budget.hard_window(),
            rollback_secs: budget.rollback,
            grace_secs: KILL_GRACE_SECS,
            magic_rollback: spec.magic_rollback,
            // Only a confirmed system becomes the boot entry.
            then_boot: self.ctx.goal.boots(),
            env: self.ctx.switch_env,
        };
        // The watch that sees the activation await its confirmation also
        // answers the health check that comes before the confirmation; the
        // first watch comes with the start.
        let health = budget.health;
        let limit = Duration::from_secs(budget.activation_wait());
        self.stage_keys(host).await?;
        let since = Instant::now();
        self.agent_starts();
        let secs = limit.as_secs();
        let launched = host.launch(&action, seen, Some(health), secs, &mut self.lines()).await;
        let first = match (launched.delivered, launched.status) {
            (true, status) | (false, status @ Ok(_)) => Some((since, status)),
            (false, Err(e)) => match self.started_anyway(host, e).await? {
                Ok(()) => None,
                Err(e) => {
                    if !self.keys.is_empty() {
                        let _ = host.discard_keys(10).await;
                    }
                    return Err(End::unchanged(
                        e.reason(Reason::ActivationFailed),
                        format!("could not start the agent: {e}"),
                    ));
                }
            },
        };
        match self.settle(host, seen, None, Some(health), limit, first).await {
            Ok(s) => Ok(s),
            Err(Unsettled::Lost(why)) => Err(lost(&why, &host.inspect_hint())),
            Err(Unsettled::Timeout(why)) => {
                // The activation outlived its timeout from our side: ask
                // the agent to stop it and roll back, then wait for that as
                // long as the agent's bound of a rollback.
                let _ = host.abort(Reason::Timeout, &why, ABORT_SECS).await;
                let limit = Duration::from_secs(budget.rollback_wait());
                let settled = self.settle(host, seen, None, Some(health), limit, None).await;
                settled.map_err(|e| lost(&e.to_string(), &host.inspect_hint()))
            }
        }
    }

    /// Send the host's keys for the activation (nothing is written yet);
    /// for a revert, stage the keys it had before the run it leaves.
    async fn stage_keys<H: Host>(&mut self, host: &mut H) -> Result<(), End> {
        let secs = self.spec().timeouts.activate.min(120);
        if let (Mode::Revert { from_run, .. }, false) =
            (&self.ctx.mode, self.spec().keys.is_empty())
        {
            if let Err(e) = host.adopt_keys(from_run, secs).await {
                self.note(format!("the keys it had before cannot be put back: {e}"));
            }
            return Ok(());
        }
        if self.keys.is_empty() {
            return Ok(());
        }
        let keep = self.ctx.keep_keys;
        let staged = host.stage_keys(&self.keys, keep, secs, &mut self.lines()).await;
        staged.map_err(|e| {
            End::unchanged(
                e.reason(Reason::Keys),
                format!("sending the keys: {e}; nothing changed"),
            )
        })
    }

    /// Start an agent action. An error may come after the target accepted
    /// it (a timeout, a dropped connection): then ask whether it started,
    /// and follow it if it did. `Ok(Err(e))`: it did not start.
    async fn start_agent<H: Host>(
        &mut self,
        host: &mut H,
        action: &AgentAction,
    ) -> Result<Result<(), HostError>, End> {
        let secs = self.budget().start;
        // From here on the action may be running: keep its GC root.
        self.agent_starts();
        match host.start(action, secs).await {
            Ok(()) => Ok(Ok(())),
            Err(e) => self.started_anyway(host, e).await,
        }
    }

    /// After `e` starting an action (with the agent counted as started):
    /// did it start anyway? `Ok(Err(e))`: it did not.
    async fn started_anyway<H: Host>(
        &mut self,
        host: &mut H,
        e: HostError,
    ) -> Result<Result<(), HostError>, End> {
        match host.probe(PROBE_SECS).await {
            Ok(true) => {
                self.note(format!(
                    "the agent started although starting it said: {e}; following it"
                ));
                Ok(Ok(()))
            }
            Ok(false) => {
                self.agent_started = false;
                self.ctx.changing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                Ok(Err(e))
            }
            Err(probe) => Err(lost(
                &format!("starting the agent said: {e}; asking whether it started: {probe}"),
                &host.inspect_hint(),
            )),
        }
    }

    /// Check the host, confirm over a fresh login (or tell the agent not to
    /// wait), and follow the agent to its decision.
    /// `health`: as the watch that saw the activation end answered it.
    async fn confirm<H: Host>(
        &mut self,
        host: &mut H,
        seen: &mut usize,
        health: Option<Health>,
    ) -> Result<AgentStatus, End> {
        self.start(Phase::Confirm);
        // The confirming login also brings the agent's answer.
        let first = match self.check_and_confirm(host, seen, health).await {
            Ok(answer) => Some((Instant::now(), answer)),
            Err((cause, why)) => {
                self.note(format!("not confirming: {why}"));
                // Tell the agent now when we can; otherwise its own timeout does.
                let _ = host.abort(cause, &why, ABORT_UNCONFIRMED_SECS).await;
                None
            }
        };
        // At worst the window runs out, and the host rolls back.
        let patient = AgentState::AwaitingConfirmation;
        let limit = Duration::from_secs(self.budget().confirm_wait());
        let settled = self.settle(host, seen, Some(&patient), None, limit, first).await;
        settled.map_err(|e| lost(&e.to_string(), &host.inspect_hint()))
    }

    /// Health (system running, no unit failed that had not failed before,
    /// the user's checks), then the confirmation over a brand-new login;
    /// `Ok`: the agent's answer to it (as a watch gives it).
    async fn check_and_confirm<H: Host>(
        &self,
        host: &mut H,
        seen: &mut usize,
        health: Option<Health>,
    ) -> Result<Result<AgentStatus, HostError>, (Reason, String)> {
        let budget = self.budget();
        let health = match health {
            Some(h) => h,
            None => host
                .health(budget.health)
                .await
                .map_err(|e| (Reason::HealthCheck, format!("health check: {e}")))?,
        };
        if !health.healthy_after_activation() {
            return Err((Reason::HealthCheck, format!("health check: {}", health.describe())));
        }
        for check in &self.spec().health_checks {
            host.health_check(check).await.map_err(|e| (Reason::HealthCheck, e))?;
            self.note(format!("health check passed: {}", check.description));
        }
        let confirmed = host.confirm(seen, budget.confirm_login, &mut self.lines()).await;
        match confirmed {
            Followed { delivered: false, status: Err(e) } => {
                Err((Reason::NotConfirmed, format!("a fresh ssh login could not confirm: {e}")))
            }
            Followed { status, .. } => Ok(status),
        }
    }

    /// Write the boot entry of a system that runs confirmed (finishing an
    /// earlier run's boot step), or with `--goal boot`. (A confirmed
    /// activation of this run goes on to its boot entry by itself.)
    pub(super) async fn boot<H: Host>(&mut self, host: &mut H, wanted: &Wanted) -> End {
        self.start(Phase::Boot);
        let toplevel = wanted.toplevel.clone();
        if let Err(end) = self.still_locked(host, &toplevel).await {
            return end;
        }
        let action = AgentAction::Boot { toplevel: toplevel.clone(), env: self.ctx.switch_env };
        match self.start_agent(host, &action).await {
            Err(end) => return end,
            Ok(Err(e)) => {
                let msg = format!("could not start the agent: {e}; nothing changed");
                return End::unchanged(e.reason(Reason::BootEntry), msg);
            }
            Ok(Ok(())) => {}
        }
        let mut seen = 0;
        // Until the boot agent writes its first state, an activation's
        // confirmed state is still there: keep waiting through it.
        let limit = Duration::from_secs(self.spec().timeouts.boot);
        let confirmed = Some(&AgentState::Confirmed);
        let status = self.settle(host, &mut seen, confirmed, None, limit, None).await;
        self.boot_ended(host, status, wanted).await
    }

    /// The end of a boot step, from the agent's last state.
    async fn boot_ended<H: Host>(
        &mut self,
        host: &mut H,
        status: Result<AgentStatus, Unsettled>,
        wanted: &Wanted,
    ) -> End {
        match status {
            Ok(s) if s.state == AgentState::Booted => {
                // --goal boot leaves the running system as it is.
                let runs = (self.ctx.goal != Goal::Boot).then_some(&wanted.toplevel);
                End::reached(Outcome::Deployed, runs, Some(&wanted.toplevel))
            }
            Ok(s) => self.agent_ended(host, &s, wanted).await,
            Err(e) => lost(&e.to_string(), &host.inspect_hint()),
        }
    }

    /// The agent ended without success: say what the host runs and boots.
    async fn agent_ended<H: Host>(
        &mut self,
        host: &mut H,
        s: &AgentStatus,
        wanted: &Wanted,
    ) -> End {
        // --goal boot activates nothing: the host runs what it ran.
        let before = self.facts.as_ref().and_then(|f| f.current.clone());
        let runs =
            (self.ctx.goal == Goal::Boot).then(|| before.unwrap_or_else(|| "no system".into()));
        let mut end = agent_end(s, &wanted.toplevel, runs.as_deref(), &host.inspect_hint());
        // The host rebooted, the agent was killed, another switch replaced
        // the run's system, another run may hold the lock: what it runs and
        // boots now is read again.
        let changed = matches!(s.state, AgentState::Vanished | AgentState::Superseded)
            || (s.state == AgentState::Refused && s.cause == Some(Reason::LockLost));
        if changed {
            let facts = host.facts(&wanted.toplevel, None, FACTS_SECS).await;
            if let Ok(f) = facts {
                end.system = f.current.clone();
                end.boot = f.boots().map(String::from);
                self.facts = Some(f);
            }
        }
        end
    }

    /// Follow the agent until it needs us or is done, re-attaching after a
    /// lost connection, all within `limit`. `first`: a watch already made
    /// (with the start), and since when.
    async fn settle<H: Host>(
        &self,
        host: &mut H,
        seen: &mut usize,
        patient: Option<&AgentState>,
        health: Option<u64>,
        limit: Duration,
        first: Option<(Instant, Result<AgentStatus, HostError>)>,
    ) -> Result<AgentStatus, Unsettled> {
        let (since, mut first) = match first {
            Some((since, watched)) => (since, Some(watched)),
            None => (Instant::now(), None),
        };
        let deadline = since + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && first.is_none() {
                let why = format!("the agent did not settle within {} s", limit.as_secs());
                return Err(Unsettled::Timeout(why));
            }
            let secs = left.as_secs().max(1);
            let watched = match first.take() {
                Some(watched) => watched,
                None => {
                    self.renew_lock(host).await;
                    host.watch(seen, patient, health, secs, &mut self.lines()).await
                }
            };
            match watched {
                Ok(status) => return Ok(status),
                Err(e) if e.reason(Reason::Internal) == Reason::Timeout => {
                    let why = format!("the activation did not finish within {} s", limit.as_secs());
                    return Err(Unsettled::Timeout(why));
                }
                Err(e) => {
                    if let Err(why) = self.reattach(host, deadline, &e).await {
                        let why = format!("connection lost and not regained: {e} ({why})");
                        return Err(Unsettled::Lost(why));
                    }
                }
            }
        }
    }

    /// Reconnect (and take the host lock again) until `deadline`.
    async fn reattach<H: Host>(
        &self,
        host: &mut H,
        deadline: Instant,
        why: &HostError,
    ) -> Result<(), String> {
        if host.alive().await {
            // The connection is fine; the command itself failed. Retry once after a pause.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return if Instant::now() < deadline { Ok(()) } else { Err("out of time".into()) };
        }
        self.note(format!("connection lost ({why}); reconnecting"));
        let mut last = String::from("out of time");
        while Instant::now() < deadline {
            match host.reconnect().await {
                Ok(()) => {
                    self.note("reconnected; re-attaching to the activation");
                    return Ok(());
                }
                // Another run took the host lock meanwhile: stop following.
                Err(e @ HostError::Lock(_)) => return Err(e.to_string()),
                Err(e) => {
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_secs(1)).await
                }
            }
        }
        Err(last)
    }
}

/// Why following the agent ended without a state.
#[derive(Debug)]
enum Unsettled {
    /// It did not settle in time (the connection was fine).
    Timeout(String),
    /// The connection was lost and not regained (or the lock was).
    Lost(String),
}

impl std::fmt::Display for Unsettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsettled::Timeout(s) | Unsettled::Lost(s) => f.write_str(s),
        }
    }
}

fn lost(why: &str, inspect: &str) -> End {
    End::unknown(
        Reason::Lost,
        format!(
            "lost track of the activation ({why}); the host confirms or rolls back by itself — inspect {inspect}"
        ),
    )
}
