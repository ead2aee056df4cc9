//! Activate, confirm, boot: the phases in which the host changes. The
//! agent on the host owns the outcome; the deployer follows it (re-attaching
//! after a lost connection), confirms it over a fresh login, or tells it to
//! go back.

use std::time::Duration;

use tokio::time::Instant;

use super::{agent_end, confirm_window, End, HostRun, Wanted};
use crate::agent::{AgentAction, AgentState, AgentStatus};
use crate::events::{Outcome, Phase, Reason};
use crate::host::{Host, HostError};

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
            return agent_end(&status, &host.inspect_hint());
        }
        let status = match self.confirm(host, &mut seen).await {
            Ok(s) => s,
            Err(end) => return end,
        };
        if status.state != AgentState::Confirmed {
            return agent_end(&status, &host.inspect_hint());
        }
        // Only a confirmed system becomes the boot entry.
        self.boot(host, wanted, seen).await
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
        let t = spec.timeouts;
        self.start(Phase::Activate);
        let action = AgentAction::Activate {
            toplevel: wanted.toplevel.clone(),
            activate_secs: t.activate,
            confirm_secs: confirm_window(spec),
            magic_rollback: spec.magic_rollback,
        };
        if let Err(e) = host.start(&action, 30).await {
            return Err(End::unchanged(
                e.reason(Reason::ActivationFailed),
                format!("activate: {e}"),
            ));
        }
        self.agent_started = true;
        let limit = Duration::from_secs(t.activate.saturating_add(15));
        match self.settle(host, seen, None, limit).await {
            Ok(s) => Ok(s),
            Err(why) => {
                // The activation outlived its timeout from our side: ask
                // the agent to stop it and roll back, then wait for that.
                let _ = host.abort(Reason::Timeout, &why, 30).await;
                let limit = limit + Duration::from_secs(t.confirm.saturating_add(45));
                self.settle(host, seen, None, limit)
                    .await
                    .map_err(|e| lost(&e, &host.inspect_hint()))
            }
        }
    }

    /// Check the host, confirm over a fresh login (or tell the agent not to
    /// wait), and follow the agent to its decision.
    async fn confirm<H: Host>(
        &mut self,
        host: &mut H,
        seen: &mut usize,
    ) -> Result<AgentStatus, End> {
        self.start(Phase::Confirm);
        if let Err((cause, why)) = self.check_and_confirm(host).await {
            self.note(format!("not confirming: {why}"));
            // Tell the agent now when we can; otherwise its own timeout does.
            let _ = host.abort(cause, &why, 10).await;
        }
        let t = self.spec().timeouts;
        let secs = confirm_window(self.spec()).saturating_add(t.activate).saturating_add(60);
        let patient = AgentState::AwaitingConfirmation;
        let settled = self.settle(host, seen, Some(&patient), Duration::from_secs(secs)).await;
        settled.map_err(|e| lost(&e, &host.inspect_hint()))
    }

    /// Health (system running, no failed unit, the user's checks), then the
    /// confirmation over a brand-new login.
    async fn check_and_confirm<H: Host>(&self, host: &mut H) -> Result<(), (Reason, String)> {
        let t = self.spec().timeouts;
        let health = host.health(t.confirm.max(5)).await;
        let health = health.map_err(|e| (Reason::HealthCheck, format!("health check: {e}")))?;
        if !health.is_running() {
            return Err((Reason::HealthCheck, format!("health check: {}", health.describe())));
        }
        for check in &self.spec().health_checks {
            host.check(check).await.map_err(|e| (Reason::HealthCheck, e))?;
            self.note(format!("health check passed: {}", check.description));
        }
        let confirmed = host.confirm(t.connect.saturating_add(t.confirm)).await;
        confirmed.map_err(|e| {
            (Reason::NotConfirmed, format!("a fresh ssh login could not confirm: {e}"))
        })
    }

    /// Write the boot entry of a confirmed system. `seen`: the lines of the
    /// run's log already shown (the boot log continues the activation's).
    pub(super) async fn boot<H: Host>(
        &mut self,
        host: &mut H,
        wanted: &Wanted,
        mut seen: usize,
    ) -> End {
        self.start(Phase::Boot);
        let toplevel = wanted.toplevel.clone();
        let action =
            AgentAction::Boot { toplevel: toplevel.clone(), generation: wanted.generation };
        if let Err(e) = host.start(&action, 30).await {
            return boot_failed(&toplevel, &e.to_string());
        }
        self.agent_started = true;
        // Until the boot agent writes its first state, the activation's
        // confirmed state is still there: keep waiting through it.
        let limit = Duration::from_secs(self.spec().timeouts.boot);
        match self.settle(host, &mut seen, Some(&AgentState::Confirmed), limit).await {
            Ok(s) if s.state == AgentState::Booted => End::ok(Outcome::Deployed, &toplevel),
            Ok(s) => boot_failed(&toplevel, &format!("{} {}", s.state.as_str(), s.reason)),
            Err(e) => boot_failed(&toplevel, &e),
        }
    }

    /// Follow the agent until it needs us or is done, re-attaching after a
    /// lost connection, all within `limit`.
    async fn settle<H: Host>(
        &self,
        host: &mut H,
        seen: &mut usize,
        patient: Option<&AgentState>,
        limit: Duration,
    ) -> Result<AgentStatus, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("the agent did not settle within {} s", limit.as_secs()));
            }
            let secs = left.as_secs().max(1);
            match host.watch(seen, patient, secs, &mut self.lines()).await {
                Ok(status) => return Ok(status),
                Err(e) if e.reason(Reason::Internal) == Reason::Timeout => {
                    return Err(format!(
                        "the activation did not finish within {} s",
                        limit.as_secs()
                    ))
                }
                Err(e) => {
                    if !self.reattach(host, deadline, &e).await {
                        return Err(format!("connection lost and not regained: {e}"));
                    }
                }
            }
        }
    }

    /// Reconnect until `deadline`. True when the connection is back.
    async fn reattach<H: Host>(&self, host: &mut H, deadline: Instant, why: &HostError) -> bool {
        if host.alive().await {
            // The connection is fine; the command itself failed. Retry once after a pause.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return Instant::now() < deadline;
        }
        self.note(format!("connection lost ({why}); reconnecting"));
        while Instant::now() < deadline {
            match host.reconnect().await {
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

fn boot_failed(toplevel: &crate::nix::StorePath, why: &str) -> End {
    End {
        system: Some(toplevel.to_string()),
        ..End::unknown(
            Reason::BootEntry,
            format!(
                "the new system runs, but writing its boot entry failed ({why}); inspect with \
                 `readlink -f /nix/var/nix/profiles/system` and re-run deploy-flake to finish the boot step"
            ),
        )
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
