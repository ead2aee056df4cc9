//! Runs the pipeline for every selected host in parallel, bounded by
//! `--max-parallel`, wave after wave when a rollout stages the run. One
//! host's failure never stops or hides another's within a wave; more
//! failures than the rollout's budget stop the next waves from starting.
//! Ctrl-C stops new hosts (and waves) from starting; hosts already past
//! `connect` finish (the on-target agent confirms or rolls back by itself).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::events::{Event, HostReport, Outcome, Reason};
use crate::exit::Exit;
use crate::host::{Shared, SshHost};
use crate::pipeline::{self, Context, InterruptHandle};
use crate::rollout::{halted_message, Plan, Soak, Wave};
use crate::select::Target;
use crate::ssh::Destination;

/// A new id per run: names the run's state dir and units on each target.
pub fn new_run_id() -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut seed = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut seed);
    }
    format!("{}-{}-{:08x}", now.as_secs(), std::process::id(), u32::from_le_bytes(seed))
}

/// Who is deploying: shown to a concurrent deployer that finds the lock.
pub fn lock_owner(run_id: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "run {run_id} by {user}@{} (pid {}) since unix time {since}",
        host.trim(),
        std::process::id()
    )
}

/// [`origin`], with the flake's revision looked up once per run, beside
/// the run's first steps ([`Origin::prefetch`]) or when first needed.
pub struct Origin {
    flake: String,
    goal: String,
    text: tokio::sync::OnceCell<String>,
}

impl Origin {
    pub fn new(flake: &str, goal: &str) -> Arc<Origin> {
        let (flake, goal) = (flake.to_string(), goal.to_string());
        Arc::new(Origin { flake, goal, text: tokio::sync::OnceCell::new() })
    }

    /// A known text (tests).
    pub fn fixed(text: &str) -> Arc<Origin> {
        let text = tokio::sync::OnceCell::new_with(Some(text.to_string()));
        Arc::new(Origin { flake: String::new(), goal: String::new(), text })
    }

    /// Look the revision up now, in the background.
    pub fn prefetch(self: &Arc<Self>) {
        let origin = self.clone();
        tokio::spawn(async move {
            origin.get().await;
        });
    }

    pub async fn get(&self) -> &str {
        let text = self.text.get_or_init(|| async {
            let revision = crate::nix::flake_revision(&self.flake, 60).await;
            origin(&self.flake, revision.as_deref(), &self.goal)
        });
        text.await
    }
}

/// Who deploys from which flake, as each host keeps it (`<key> <value>`
/// lines; values on one line). The flake reference without its
/// credentials (`redact::flake_ref`).
pub fn origin(flake: &str, revision: Option<&str>, goal: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let line = |k: &str, v: &str| format!("{k} {}\n", v.replace(['\n', '\r'], " "));
    [
        line("by", &format!("{user}@{}", host.trim())),
        line("flake", &crate::redact::flake_ref(flake)),
        line("revision", revision.unwrap_or("none")),
        line("goal", goal),
    ]
    .concat()
}

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
        permits: Arc::new(Semaphore::new(max_parallel.max(1))),
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
                let msg = "internal error: the host's task panicked; inspect the host";
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
    permits: Arc<Semaphore>,
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
                permits: &self.permits,
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

    /// Deploy these hosts in parallel (bounded by the permits).
    async fn deploy(&mut self, hosts: &[usize]) {
        let mut set = JoinSet::new();
        for &i in hosts {
            let target = self.targets[i].clone();
            let ctx = self.ctx.clone();
            let permits = self.permits.clone();
            let shared = self.shared.clone();
            set.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore is never closed");
                if ctx.interrupt.is_set() {
                    let report = not_run(
                        &target.name,
                        Outcome::Cancelled,
                        Reason::Cancelled,
                        Duration::ZERO,
                        "not started: the run was interrupted",
                    );
                    (ctx.sink)(Event::HostFinished { report: report.clone() });
                    return (i, report);
                }
                let dest = Destination::from_spec(&target.spec);
                let host = SshHost::new(&target.name, dest, &ctx.run_id, shared);
                (i, pipeline::deploy(&target, &ctx, host).await)
            });
        }
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, r)) => self.reports[i] = Some(r),
                // A panic in one host's task must not hide the others.
                Err(e) => tracing::error!("a host task panicked: {e}"),
            }
        }
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

/// Ctrl-C, or SIGTERM (a cancelled CI job, a service manager stopping
/// it): the first stops every host that has not started to change (at
/// once, whatever it is doing: local builds and temporary directories go
/// with it); the second quits, leaving hosts whose agent is at work to
/// their agents. The exit code then says whether any was.
pub fn on_interrupts(raise: InterruptHandle, changing: Arc<AtomicUsize>) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).ok();
        if let Some(by) = interrupted(&mut term).await {
            raise.raise();
            eprintln!(
                "deploy-flake: interrupted ({by}): hosts not yet changing stop now, unchanged; hosts \
                 already activating are confirmed or rolled back (Ctrl-C or SIGTERM again to quit now)"
            );
        }
        if interrupted(&mut term).await.is_some() {
            crate::process::stop_all();
            let exit = if changing.load(Ordering::SeqCst) > 0 {
                eprintln!(
                    "deploy-flake: quitting; hosts mid-activation converge on their own (confirmed: \
                     the new system; otherwise: the previous one)"
                );
                Exit::UnknownState
            } else {
                eprintln!("deploy-flake: quitting; no host had started to change");
                Exit::HostsFailed
            };
            std::process::exit(exit.code().into());
        }
    });
}

/// The next Ctrl-C or SIGTERM, by name (`None`: signals cannot be had).
async fn interrupted(term: &mut Option<tokio::signal::unix::Signal>) -> Option<&'static str> {
    match term {
        Some(term) => tokio::select! {
            c = tokio::signal::ctrl_c() => c.ok().map(|()| "Ctrl-C"),
            t = term.recv() => t.map(|()| "SIGTERM"),
        },
        None => tokio::signal::ctrl_c().await.ok().map(|()| "Ctrl-C"),
    }
}

/// The exit status of a run: the worst host decides.
pub fn exit_for(reports: &[HostReport]) -> Exit {
    let mut exit = Exit::Success;
    for r in reports {
        let e = match r.outcome {
            Outcome::Deployed | Outcome::UpToDate => Exit::Success,
            Outcome::Failed
            | Outcome::RolledBack
            | Outcome::Unconfirmed
            | Outcome::Superseded
            | Outcome::Cancelled
            | Outcome::Skipped
            | Outcome::Unchecked => Exit::HostsFailed,
            Outcome::Unknown => Exit::UnknownState,
        };
        if e == Exit::UnknownState || (e == Exit::HostsFailed && exit == Exit::Success) {
            exit = e;
        }
    }
    exit
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn run_ids_differ() {
        assert_ne!(new_run_id(), new_run_id());
    }
}
