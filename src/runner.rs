//! Runs the pipeline for every selected host in parallel, bounded by
//! `--max-parallel`, wave after wave when a rollout stages the run. One
//! host's failure never stops or hides another's within a wave; more
//! failures than the rollout's budget stop the next waves from starting.
//! Ctrl-C stops new hosts (and waves) from starting; hosts already past
//! `connect` finish (the on-target agent confirms or rolls back by itself).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::{Event, HostReport, Outcome, Reason};
use crate::exit::exit_for;
use crate::fanout::Fanout;
use crate::host::{Shared, SshHost};
use crate::pipeline::{self, Context};
use crate::rollout::{halted_message, Plan, Wave};
use crate::select::Target;
use crate::soak::Soak;
use crate::ssh::Destination;

/// Deploy `targets` wave by wave as `plan` says (one wave of every host
/// when there is no rollout); returns one report per host, in target order.
pub async fn run(
    targets: Vec<Target>,
    mut ctx: Context,
    max_parallel: usize,
    shared: Arc<Shared>,
    plan: &Plan,
) -> Vec<HostReport> {
    let started = Instant::now();
    // A soak may send a host back: its previous keys stay until then.
    ctx.keep_keys = plan.soak > 0;
    let names = |w: &Wave| w.hosts.iter().map(|i| targets[*i].name.clone()).collect::<Vec<_>>();
    (ctx.sink)(Event::RunStarted {
        run_id: ctx.run_id.clone(),
        hosts: targets.iter().map(|t| t.name.clone()).collect(),
        waves: plan.is_staged().then(|| plan.waves.iter().map(names).collect()),
    });
    let mut run = Waves {
        targets: &targets,
        ctx: &ctx,
        plan,
        fanout: Fanout::new(max_parallel).until(ctx.interrupt.clone()),
        shared,
        reports: vec![None; targets.len()],
        stop: None,
    };
    for (w, wave) in plan.waves.iter().enumerate() {
        run.wave(w + 1, wave).await;
    }
    let reports: Vec<HostReport> = run
        .reports
        .into_iter()
        .zip(&targets)
        .map(|(r, t)| {
            r.unwrap_or_else(|| {
                let msg = "internal error: the host was never run; inspect the host";
                not_run(&t.name, Outcome::Unknown, Reason::Internal, started.elapsed(), msg)
            })
        })
        .collect();
    let exit = exit_for(&reports);
    (ctx.sink)(Event::RunFinished {
        reports: reports.clone(),
        exit_code: exit.code(),
        duration: started.elapsed(),
    });
    reports
}

/// A run in progress, wave by wave.
struct Waves<'a> {
    targets: &'a [Target],
    ctx: &'a Context,
    plan: &'a Plan,
    fanout: Fanout,
    shared: Arc<Shared>,
    reports: Vec<Option<HostReport>>,
    /// Why no further wave starts: its hosts' outcome, reason and message.
    stop: Option<(Outcome, Reason, String)>,
}

impl Waves<'_> {
    async fn wave(&mut self, n: usize, wave: &Wave) {
        if self.stop.is_none() && self.ctx.interrupt.is_set() {
            let msg = "not started: the run was interrupted".to_string();
            self.stop = Some((Outcome::Cancelled, Reason::Cancelled, msg));
        }
        if let Some((outcome, reason, msg)) = &self.stop {
            for i in &wave.hosts {
                let report =
                    not_run(&self.targets[*i].name, *outcome, *reason, Duration::ZERO, msg);
                (self.ctx.sink)(Event::HostFinished { report: report.clone() });
                self.reports[*i] = Some(report);
            }
            return;
        }
        let staged = self.plan.is_staged();
        let waves = self.plan.waves.len();
        let started = Instant::now();
        let hosts: Vec<String> = wave.hosts.iter().map(|i| self.targets[*i].name.clone()).collect();
        if staged {
            let canary = wave.canary;
            (self.ctx.sink)(Event::WaveStarted { wave: n, waves, canary, hosts });
        }
        self.deploy(&wave.hosts).await;
        if staged {
            let failed = failed(&self.reports, &wave.hosts);
            let duration = started.elapsed();
            (self.ctx.sink)(Event::WaveFinished { wave: n, waves, failed, duration });
        }
        if self.plan.soak > 0 {
            let soak = Soak {
                targets: self.targets,
                ctx: self.ctx,
                fanout: &self.fanout,
                shared: &self.shared,
            };
            soak.run(n, &wave.hosts, self.plan.soak, &mut self.reports).await;
        }
        self.halt_if_over_budget(n);
    }

    /// Too many failures: no further wave starts.
    fn halt_if_over_budget(&mut self, n: usize) {
        let all: Vec<usize> = (0..self.targets.len()).collect();
        let failed = failed(&self.reports, &all);
        let rest: Vec<String> = self.plan.waves[n..]
            .iter()
            .flat_map(|w| w.hosts.iter().map(|i| self.targets[*i].name.clone()))
            .collect();
        if rest.is_empty() || self.plan.may_continue(failed.len()) || self.ctx.interrupt.is_set() {
            return;
        }
        let msg = halted_message(&failed, self.plan, n);
        (self.ctx.sink)(Event::RolloutHalted {
            wave: n,
            failed,
            max_failures: self.plan.max_failures.to_string(),
            budget: self.plan.budget,
            skipped: rest,
        });
        self.stop = Some((Outcome::Skipped, Reason::Halted, msg));
    }

    /// Deploy these hosts in parallel (the run's fan-out); a host whose
    /// turn comes after Ctrl-C is cancelled, unstarted.
    async fn deploy(&mut self, hosts: &[usize]) {
        let (ctx, shared, targets) = (self.ctx.clone(), self.shared.clone(), self.targets);
        let items: Vec<Target> = hosts.iter().map(|i| targets[*i].clone()).collect();
        let sink = ctx.sink.clone();
        let ran = self
            .fanout
            .run(
                items,
                move |target: Target| {
                    let (ctx, shared) = (ctx.clone(), shared.clone());
                    async move {
                        let dest = Destination::new(target.spec.login());
                        let host = SshHost::new(&target.name, dest, &ctx.run_id, shared);
                        pipeline::deploy(&target, &ctx, host).await
                    }
                },
                move |target: Target| {
                    let msg = "not started: the run was interrupted";
                    let (outcome, reason) = (Outcome::Cancelled, Reason::Cancelled);
                    let report = not_run(&target.name, outcome, reason, Duration::ZERO, msg);
                    sink(Event::HostFinished { report: report.clone() });
                    report
                },
            )
            .await;
        for (&i, r) in hosts.iter().zip(ran) {
            self.reports[i] = Some(r.unwrap_or_else(|p| self.panicked(i, &p)));
        }
    }

    /// The report of a host whose task panicked: its state is not known.
    fn panicked(&self, i: usize, p: &crate::fanout::Panicked) -> HostReport {
        let msg = format!("{p}; inspect the host");
        let name = &self.targets[i].name;
        let report = not_run(name, Outcome::Unknown, Reason::Internal, Duration::ZERO, &msg);
        (self.ctx.sink)(Event::HostFinished { report: report.clone() });
        report
    }
}

/// The hosts among `of` that did not succeed (neither skipped nor
/// cancelled: those never started).
fn failed(reports: &[Option<HostReport>], of: &[usize]) -> Vec<String> {
    of.iter()
        .filter_map(|i| reports[*i].as_ref())
        .filter(|r| r.outcome.counts_as_failure())
        .map(|r| r.host.clone())
        .collect()
}

/// The report of a host the pipeline did not (or could not) run.
fn not_run(
    host: &str,
    outcome: Outcome,
    reason: Reason,
    duration: Duration,
    msg: &str,
) -> HostReport {
    HostReport {
        host: host.to_string(),
        outcome,
        phase: None,
        duration,
        system: None,
        boot: None,
        needs_reboot: None,
        before: None,
        reason: Some(reason),
        message: Some(msg.to_string()),
        provenance: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::Exit;

    fn r(o: Outcome) -> HostReport {
        not_run("h", o, Reason::Internal, Duration::ZERO, "")
    }

    #[test]
    fn the_worst_host_decides_the_exit_code() {
        use Outcome::*;
        let table: &[(&[Outcome], Exit)] = &[
            (&[], Exit::Success),
            (&[Deployed, UpToDate], Exit::Success),
            (&[Deployed, Failed], Exit::HostsFailed),
            (&[RolledBack], Exit::HostsFailed),
            (&[Cancelled, Deployed], Exit::HostsFailed),
            (&[Deployed, Skipped], Exit::HostsFailed),
            (&[Deployed, Unchecked], Exit::HostsFailed),
            (&[Unknown, Failed], Exit::UnknownState),
            (&[Failed, Unknown, Deployed], Exit::UnknownState),
        ];
        for (outcomes, want) in table {
            let reports: Vec<_> = outcomes.iter().map(|o| r(*o)).collect();
            assert_eq!(exit_for(&reports), *want, "{outcomes:?}");
        }
    }
}
