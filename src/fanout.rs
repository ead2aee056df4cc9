//! The one per-host fan-out of the engine: a job per target, each in a task
//! of its own, at most the run's parallelism at once (its permits, shared by
//! every fan-out of the run: a deploy wave, the soak's checks and returns,
//! `status`, `diff`, `keys`). Ctrl-C: a target whose turn comes after the
//! interrupt is not started (its job's `cancelled` answer stands for it).
//! A panic in one target's task never hides the others: it is that
//! target's result. Results come in target order.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::events::{Event, Sink};
use crate::exit::Exit;
use crate::pipeline::Interrupt;
use crate::select::Target;

/// A target's task panicked: what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked(pub String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "internal error: the host's task panicked ({})", self.0)
    }
}

/// What a read-only look at one host ends with (`status`'s answer,
/// `diff`'s changes): its event, what stands for it when its task
/// panicked, and the run's exit code from all of them.
pub trait Look: Send + 'static {
    /// Its event (`host-status`, `host-diff`).
    fn event(&self) -> Event;
    /// The host's look failed: why.
    fn failed(host: &str, why: String) -> Self;
    /// The run's exit code.
    fn exit(all: &[Self]) -> Exit
    where
        Self: Sized;
}

/// The run's fan-out: its permits, and the interrupt that stops new starts.
#[derive(Clone)]
pub struct Fanout {
    permits: Arc<Semaphore>,
    interrupt: Option<Interrupt>,
}

impl Fanout {
    /// At most `parallel` jobs at once (at least one), never interrupted.
    pub fn new(parallel: usize) -> Fanout {
        Fanout { permits: Arc::new(Semaphore::new(parallel.max(1))), interrupt: None }
    }

    /// The same, and no job starts once `interrupt` is raised.
    pub fn until(self, interrupt: Interrupt) -> Fanout {
        Fanout { interrupt: Some(interrupt), ..self }
    }

    /// Has the run been interrupted?
    pub fn interrupted(&self) -> bool {
        self.interrupt.as_ref().is_some_and(Interrupt::is_set)
    }

    /// `job` for every item, bounded by the permits; an item whose turn
    /// comes after the interrupt gets `cancelled` instead (in its task, at
    /// its turn). Results in the items' order.
    pub async fn run<T, R, Fut>(
        &self,
        items: Vec<T>,
        job: impl Fn(T) -> Fut + Send + Sync + 'static,
        cancelled: impl Fn(T) -> R + Send + Sync + 'static,
    ) -> Vec<Result<R, Panicked>>
    where
        T: Send + 'static,
        R: Send + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let (job, cancelled) = (Arc::new(job), Arc::new(cancelled));
        let mut set = JoinSet::new();
        let mut order = std::collections::HashMap::new();
        let count = items.len();
        for (i, item) in items.into_iter().enumerate() {
            let (permits, interrupt) = (self.permits.clone(), self.interrupt.clone());
            let (job, cancelled) = (job.clone(), cancelled.clone());
            let task = set.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("the permits are never closed");
                if interrupt.as_ref().is_some_and(Interrupt::is_set) {
                    return cancelled(item);
                }
                job(item).await
            });
            order.insert(task.id(), i);
        }
        let mut results: Vec<Option<Result<R, Panicked>>> = (0..count).map(|_| None).collect();
        while let Some(joined) = set.join_next_with_id().await {
            match joined {
                Ok((id, r)) => results[order[&id]] = Some(Ok(r)),
                Err(e) => {
                    tracing::error!("a host's task panicked: {e}");
                    results[order[&e.id()]] = Some(Err(Panicked(e.to_string())));
                }
            }
        }
        results.into_iter().map(|r| r.expect("every task joined")).collect()
    }

    /// `job` for every item (never cancelled), bounded by the permits.
    pub async fn each<T, R, Fut>(
        &self,
        items: Vec<T>,
        job: impl Fn(T) -> Fut + Send + Sync + 'static,
    ) -> Vec<Result<R, Panicked>>
    where
        T: Send + 'static,
        R: Send + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let plain = Fanout { permits: self.permits.clone(), interrupt: None };
        plain.run(items, job, |_| unreachable!("never interrupted")).await
    }

    /// A read-only look at every target (`status`, `diff`) as a run of its
    /// own: `run-started`, each target's event as its look ends (a
    /// panicked one's as [`Look::failed`]), and `run-finished` with the
    /// run's exit code. Results in target order.
    pub async fn look<R, Fut>(
        &self,
        run_id: &str,
        targets: &[Target],
        sink: &Sink,
        job: impl Fn(Target) -> Fut + Send + Sync + 'static,
    ) -> Vec<R>
    where
        R: Look,
        Fut: Future<Output = R> + Send + 'static,
    {
        let started = std::time::Instant::now();
        let hosts = targets.iter().map(|t| t.name.clone()).collect();
        sink(Event::RunStarted { run_id: run_id.to_string(), hosts, waves: None });
        let (each, job) = (sink.clone(), Arc::new(job));
        let looked = self
            .each(targets.to_vec(), move |t: Target| {
                let (sink, job) = (each.clone(), job.clone());
                async move {
                    let r = job(t).await;
                    sink(r.event());
                    r
                }
            })
            .await;
        let all: Vec<R> = (looked.into_iter().zip(targets))
            .map(|(r, t)| {
                r.unwrap_or_else(|p| {
                    let r = R::failed(&t.name, p.to_string());
                    sink(r.event());
                    r
                })
            })
            .collect();
        let (exit_code, duration) = (R::exit(&all).code(), started.elapsed());
        sink(Event::RunFinished { reports: Vec::new(), exit_code, duration });
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn at_most_the_permits_at_once_and_results_in_order() {
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (n, m) = (now.clone(), most.clone());
        let results = Fanout::new(2)
            .each((0..6u64).collect(), move |i| {
                let (now, most) = (n.clone(), m.clone());
                async move {
                    let at = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(at, Ordering::SeqCst);
                    // Later items end first: the order is still the items'.
                    tokio::time::sleep(Duration::from_millis(30 - 5 * i)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    i * 10
                }
            })
            .await;
        assert_eq!(results, (0..6).map(|i| Ok(i * 10)).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_panic_is_its_own_target_s_result_only() {
        let results = Fanout::new(3)
            .each(vec![1, 2, 3], |i| async move {
                if i == 2 {
                    panic!("boom on {i}");
                }
                i
            })
            .await;
        assert_eq!(results[0], Ok(1));
        assert_eq!(results[2], Ok(3));
        let Err(p) = &results[1] else { panic!("{results:?}") };
        assert!(p.to_string().contains("panicked") && p.0.contains("boom on 2"), "{p}");
    }

    #[tokio::test]
    async fn after_the_interrupt_no_target_starts() {
        let (raise, interrupt) = Interrupt::new();
        let raise = Arc::new(Mutex::new(Some(raise)));
        let fan = Fanout::new(1).until(interrupt);
        let results = fan
            .run(
                vec!["a", "b", "c"],
                move |t| {
                    let raise = raise.clone();
                    async move {
                        // The first to run raises the interrupt; the others wait their turn.
                        if let Some(r) = raise.lock().unwrap().take() {
                            r.raise();
                        }
                        format!("{t} ran")
                    }
                },
                |t| format!("{t} cancelled"),
            )
            .await;
        let results: Vec<String> = results.into_iter().map(Result::unwrap).collect();
        let ran: Vec<&String> = results.iter().filter(|r| r.ends_with(" ran")).collect();
        assert_eq!(ran.len(), 1, "{results:?}");
        assert_eq!(results.iter().filter(|r| r.ends_with(" cancelled")).count(), 2, "{results:?}");
        assert!(results.iter().zip(["a", "b", "c"]).all(|(r, t)| r.starts_with(t)), "{results:?}");
        assert!(fan.interrupted());
    }

    use std::sync::Mutex;
}
