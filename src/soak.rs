//! The soak of a wave: leave its deployed hosts running for a while, check
//! each again, and return those that fail to the system they ran before
//! the run (through the same lock, test, confirm and boot steps as
//! `rollback`).

use std::sync::Arc;
use std::time::Duration;

use crate::events::{Event, HostReport, Outcome, Reason, SoakFailure};
use crate::fanout::Fanout;
use crate::host::{Shared, SshHost};
use crate::nix::StorePath;
use crate::pipeline::{self, Context, Mode};
use crate::select::Target;
use crate::ssh::Destination;

/// What a soak needs of the run.
pub struct Soak<'a> {
    pub targets: &'a [Target],
    pub ctx: &'a Context,
    /// The run's fan-out (its permits; the soak's own steps finish even
    /// after Ctrl-C).
    pub fanout: &'a Fanout,
    pub shared: &'a Arc<Shared>,
}

impl Soak<'_> {
    /// Soak wave `n` (its hosts `hosts`) for `secs`; a host that fails is
    /// returned to its previous system and its report replaced.
    pub async fn run(
        &self,
        n: usize,
        hosts: &[usize],
        secs: u64,
        reports: &mut [Option<HostReport>],
    ) {
        let soaking: Vec<usize> = hosts
            .iter()
            .copied()
            .filter(|i| reports[*i].as_ref().is_some_and(runs_something_new))
            .collect();
        if soaking.is_empty() {
            return;
        }
        let names = |ix: &[usize]| ix.iter().map(|i| self.targets[*i].name.clone()).collect();
        let sink = &self.ctx.sink;
        sink(Event::SoakStarted { wave: n, seconds: secs, hosts: names(&soaking) });
        let mut interrupt = self.ctx.interrupt.clone();
        let interrupted = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs)) => false,
            _ = interrupt.raised() => true,
        };
        if interrupted {
            let (passed, failed) = (vec![], vec![]);
            sink(Event::SoakFinished { wave: n, passed, failed, interrupted });
            // Deployed, but never checked again: not a success to report.
            for i in soaking {
                let Some(deployed) = &reports[i] else { continue };
                let report = crate::rollout::unchecked(deployed);
                sink(Event::HostFinished { report: report.clone() });
                reports[i] = Some(report);
            }
            return;
        }
        let verdicts = self.check(&soaking, reports).await;
        let passed =
            verdicts.iter().filter(|(_, v)| v.is_ok()).map(|(i, _)| *i).collect::<Vec<_>>();
        let failed: Vec<(usize, String)> =
            verdicts.into_iter().filter_map(|(i, v)| v.err().map(|why| (i, why))).collect();
        let failures = failed
            .iter()
            .map(|(i, why)| SoakFailure {
                host: self.targets[*i].name.clone(),
                message: why.clone(),
            })
            .collect();
        sink(Event::SoakFinished {
            wave: n,
            passed: names(&passed),
            failed: failures,
            interrupted,
        });
        self.send_back(failed, secs, reports).await;
    }

    /// Return each failed host to its previous system (the run's fan-out);
    /// its report is replaced by the whole story.
    async fn send_back(
        &self,
        failed: Vec<(usize, String)>,
        secs: u64,
        reports: &mut [Option<HostReport>],
    ) {
        let returns: Vec<(usize, HostReport, String)> = failed
            .into_iter()
            .filter_map(|(i, why)| reports[i].clone().map(|deployed| (i, deployed, why)))
            .collect();
        let order: Vec<usize> = returns.iter().map(|(i, _, _)| *i).collect();
        let (targets, ctx, shared) = (self.targets.to_vec(), self.ctx.clone(), self.shared.clone());
        let returned = self
            .fanout
            .each(returns, move |(i, deployed, why)| {
                let (target, ctx, shared) = (targets[i].clone(), ctx.clone(), shared.clone());
                async move { revert(&target, &ctx, shared, deployed, &why, secs).await }
            })
            .await;
        for (i, r) in order.into_iter().zip(returned) {
            match r {
                Ok(r) => reports[i] = Some(r),
                // Its deployed report stands: what it runs is not known better.
                Err(p) => tracing::error!("{}: {p}", self.targets[i].name),
            }
        }
    }

    /// Check every host, in parallel (bounded by the permits).
    async fn check(
        &self,
        hosts: &[usize],
        reports: &[Option<HostReport>],
    ) -> Vec<(usize, Result<(), String>)> {
        let items: Vec<(Target, String)> = hosts
            .iter()
            .map(|&i| {
                let deployed = reports[i].as_ref().and_then(|r| r.system.clone());
                (self.targets[i].clone(), deployed.unwrap_or_default())
            })
            .collect();
        let (run_id, shared) = (self.ctx.run_id.clone(), self.shared.clone());
        let checked = self
            .fanout
            .each(items, move |(target, deployed)| {
                let (run_id, shared) = (run_id.clone(), shared.clone());
                async move {
                    let dest = Destination::new(target.spec.login());
                    let host = SshHost::new(&target.name, dest, &run_id, shared);
                    pipeline::soak_check(&target.spec, &deployed, host).await
                }
            })
            .await;
        let verdict =
            |r: Result<_, crate::fanout::Panicked>| r.unwrap_or_else(|p| Err(p.to_string()));
        hosts.iter().copied().zip(checked.into_iter().map(verdict)).collect()
    }
}

/// Deployed, and running a system it did not run before the run (not so
/// with `--goal boot` until a reboot: there is nothing new to soak).
fn runs_something_new(r: &HostReport) -> bool {
    r.outcome == Outcome::Deployed && r.system.is_some() && r.system != r.before
}

/// Return a host that failed its soak to the system it ran before the run.
/// The revert's own end report is replaced by one that tells the whole story.
async fn revert(
    target: &Target,
    ctx: &Context,
    shared: Arc<Shared>,
    deployed: HostReport,
    why: &str,
    secs: u64,
) -> HostReport {
    let before = deployed.before.as_deref().and_then(|b| StorePath::parse(b).ok());
    let report = match before {
        Some(to) if Some(to.as_str()) != deployed.system.as_deref() => {
            let mut rctx = ctx.clone();
            rctx.mode = Mode::Revert { to, from_run: ctx.run_id.clone() };
            rctx.approved = None;
            rctx.force = false;
            // It is unhealthy: that is why it goes back.
            rctx.skip_preflight = true;
            // A run directory of its own: the deploy's holds its final state.
            rctx.run_id = format!("{}-revert", ctx.run_id);
            let sink = ctx.sink.clone();
            rctx.sink = Arc::new(move |e| {
                if !matches!(e, Event::HostFinished { .. }) {
                    sink(e)
                }
            });
            let dest = Destination::new(target.spec.login());
            let host = SshHost::new(&target.name, dest, &rctx.run_id, shared);
            let reverted = pipeline::deploy(target, &rctx, host).await;
            crate::rollout::after_soak(&deployed, Some(&reverted), why, secs)
        }
        _ => crate::rollout::after_soak(&deployed, None, why, secs),
    };
    if report.outcome == Outcome::RolledBack {
        (ctx.sink)(Event::RolledBack {
            host: report.host.clone(),
            reason: report.message.clone().unwrap_or_default(),
            cause: Some(Reason::Soak),
        });
    }
    (ctx.sink)(Event::HostFinished { report: report.clone() });
    report
}
