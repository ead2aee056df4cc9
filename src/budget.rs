//! The timing budget: every time limit that follows from another, in one
//! place. How often the deployer says it is alive and how long the lock
//! holder and the agent wait for it; how long the agent gives an
//! activation, a confirmation and a rollback; how long the deployer waits
//! for each of those. The agent is given its numbers ([`Budget::window`],
//! [`Budget::hard_window`], [`Budget::rollback`], [`KILL_GRACE_SECS`],
//! [`LOCK_PATIENCE_SECS`])
//! instead of deriving them itself; the invariants between them are tested
//! below.
//!
//! Every deadline on a target is measured with its monotonic clock
//! (`/proc/uptime`), never with `date` or file times, which an
//! administrator, chrony or a resumed VM may step.

use crate::fleet::{HealthCheck, Timeouts};

/// How often the deployer sends a heartbeat to its lock holder.
pub const HEARTBEAT_SECS: u64 = 5;
/// How long the lock holder waits for a heartbeat before it gives the host
/// lock up (the deployer died without closing its connection, or was cut
/// off, or stalled).
pub const LOCK_PATIENCE_SECS: u64 = 30;
/// Room for scheduling and a round trip on top of a limit.
pub const SLACK_SECS: u64 = 5;
/// The agent's shortest window for a sign of life: two heartbeats and
/// slack, so that a deployer that is alive is never taken for lost.
pub const MIN_WINDOW_SECS: u64 = 2 * HEARTBEAT_SECS + SLACK_SECS;
/// A rollback's switch is bounded by the activate timeout, but never by
/// less than this: it returns to a system that ran a moment ago and must
/// not be cut short.
pub const ROLLBACK_FLOOR_SECS: u64 = 300;
/// After a limit: the grace between the TERM and the KILL (the agent's
/// guard, and coreutils `timeout -k` behind it, which sends its TERM one
/// grace after the guard's), and what passes the command's output on gets
/// as long to see its end: a bounded command is over at most two graces
/// after its bound.
pub const KILL_GRACE_SECS: u64 = 5;
/// Whatever the heartbeats say, the agent waits at most this much longer
/// than its window for the confirmation.
pub const HARD_EXTRA_SECS: u64 = 600;
/// The ssh master's keepalive: an unanswered probe every this many
/// seconds (`ServerAliveInterval`) ...
pub const SERVER_ALIVE_SECS: u64 = 5;
/// ... and this many unanswered ones end it (`ServerAliveCountMax`).
pub const SERVER_ALIVE_COUNT: u64 = 3;
/// The longest a hung master connection goes unnoticed.
pub const MASTER_DEAD_SECS: u64 = SERVER_ALIVE_SECS * (SERVER_ALIVE_COUNT + 1);
/// A command bounded on the target (coreutils `timeout`) is waited for
/// this much longer here, so that the target's bound acts first; the same
/// margin is given to a command whose own waits add up to its seconds
/// (the health, the checks, `status`).
pub const REMOTE_MARGIN_SECS: u64 = 10;
/// Starting an agent action (`systemd-run`) takes at least this long to
/// give up on, and at most ...
pub const START_MIN_SECS: u64 = 5;
/// ... this long.
pub const START_MAX_SECS: u64 = 30;
/// Asking whether an action started after an error starting it.
pub const PROBE_SECS: u64 = 10;
/// Telling the agent to abort: while following it (the deployer's own
/// timeout), and before the confirmation (best effort: the agent's window
/// brings the host back anyway).
pub const ABORT_SECS: u64 = 30;
pub const ABORT_UNCONFIRMED_SECS: u64 = 10;
/// Reading the host's facts after the agent ended.
pub const FACTS_SECS: u64 = 30;

// The invariants between the constants, checked as the crate compiles:
// a live deployer's heartbeats keep both the lock and the agent's window;
// a hung master is noticed (and the reconnected deployer takes its lock
// back, which renews the agent's window) before the holder of the hung
// connection gives the lock up.
const _: () = assert!(MIN_WINDOW_SECS >= 2 * HEARTBEAT_SECS + SLACK_SECS);
const _: () = assert!(LOCK_PATIENCE_SECS >= 2 * HEARTBEAT_SECS + SLACK_SECS);
const _: () = assert!(MASTER_DEAD_SECS + HEARTBEAT_SECS + SLACK_SECS <= LOCK_PATIENCE_SECS);

/// One host's limits, derived from its timeouts and health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `timeouts.activate`: the agent's bound of the activation.
    pub activate: u64,
    /// What the host asks for: `timeouts.confirm` and the time its health
    /// checks may take (each check's timeout and period).
    pub asked_window: u64,
    /// The agent's window for the confirmation after the deployer's last
    /// sign of life: `asked_window`, but never under [`MIN_WINDOW_SECS`].
    pub window: u64,
    /// The agent's bound of a rollback's switch.
    pub rollback: u64,
    /// How long the health check before the confirmation may wait for the
    /// system to settle.
    pub health: u64,
    /// The fresh login that confirms: reaching the host and the
    /// confirmation.
    pub confirm_login: u64,
    /// Starting an agent action.
    pub start: u64,
}

impl Budget {
    /// The budget of a host with these timeouts and health checks.
    pub fn of(t: &Timeouts, health_checks: &[HealthCheck]) -> Budget {
        let checks = health_checks
            .iter()
            .fold(0u64, |sum, c| sum.saturating_add(c.timeout).saturating_add(c.period));
        let asked_window = t.confirm.saturating_add(checks);
        Budget {
            activate: t.activate,
            asked_window,
            window: asked_window.max(MIN_WINDOW_SECS),
            rollback: t.activate.max(ROLLBACK_FLOOR_SECS),
            health: t.confirm.max(5),
            confirm_login: t.connect.saturating_add(t.confirm),
            start: t.activate.clamp(START_MIN_SECS, START_MAX_SECS),
        }
    }

    /// The window was raised to [`MIN_WINDOW_SECS`]: what to tell the user.
    pub fn window_note(&self) -> Option<String> {
        (self.window > self.asked_window).then(|| {
            format!(
                "timeouts.confirm gives the host {} s to hear from the deployer, less than two \
                 heartbeats ({HEARTBEAT_SECS} s apart) and {SLACK_SECS} s of slack: it waits {} s",
                self.asked_window, self.window
            )
        })
    }

    /// The agent's hard limit for the confirmation, after the activation.
    pub fn hard_window(&self) -> u64 {
        self.window.saturating_add(HARD_EXTRA_SECS)
    }

    /// The latest the agent ends an activation: its bound, then the
    /// graces of the guard and of `timeout` behind it.
    pub fn activation_end(&self) -> u64 {
        self.activate.saturating_add(2 * KILL_GRACE_SECS)
    }

    /// The latest the agent ends a rollback's switch (its bound, the
    /// guard's grace, and `timeout -k` behind the guard).
    pub fn rollback_end(&self) -> u64 {
        self.rollback.saturating_add(2 * KILL_GRACE_SECS)
    }

    /// The deployer's wait for the activation to await the confirmation
    /// or end, with the health the watch answers then.
    pub fn activation_wait(&self) -> u64 {
        self.activation_end().saturating_add(self.health).saturating_add(SLACK_SECS)
    }

    /// The deployer's wait for a rollback, once it asked for one or the
    /// activation outlived [`Budget::activation_wait`].
    pub fn rollback_wait(&self) -> u64 {
        self.rollback_end().saturating_add(SLACK_SECS)
    }

    /// The deployer's wait for the agent's answer after the confirmation
    /// (or the refusal to confirm): at worst the window runs out and the
    /// host rolls back.
    pub fn confirm_wait(&self) -> u64 {
        self.window.saturating_add(self.rollback_wait())
    }

    /// How long a reconnected deployer tries to take its own lock back
    /// (the stale holder is ended at once; this covers its exit).
    pub fn relock_wait() -> u64 {
        SLACK_SECS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::HostSpec;

    fn spec(activate: u64, confirm: u64, checks: &[(u64, u64)]) -> HostSpec {
        let mut s = HostSpec::with_defaults("h");
        s.timeouts.activate = activate;
        s.timeouts.confirm = confirm;
        s.health_checks = checks
            .iter()
            .map(|&(timeout, period)| crate::fleet::HealthCheck {
                description: "true".into(),
                probe: crate::fleet::Probe::Command(vec!["true".into()]),
                timeout,
                period,
            })
            .collect();
        s
    }

    fn of(s: &HostSpec) -> Budget {
        Budget::of(&s.timeouts, &s.health_checks)
    }

    /// Hosts from the smallest timeouts allowed to the largest.
    fn hosts() -> Vec<HostSpec> {
        let mut v = Vec::new();
        for activate in [1, 5, 60, 299, 300, 301, 600, 3600, 31_536_000] {
            for confirm in [1, 3, 6, 14, 15, 16, 30, 600, 31_536_000] {
                v.push(spec(activate, confirm, &[]));
                v.push(spec(activate, confirm, &[(1, 1), (30, 2)]));
            }
        }
        v
    }

    #[test]
    fn a_live_deployer_is_never_taken_for_lost() {
        for s in hosts() {
            let b = of(&s);
            assert!(b.window >= MIN_WINDOW_SECS, "{b:?}");
            assert!(b.window >= b.asked_window, "{b:?}");
            assert!(b.hard_window() > b.window, "{b:?}");
        }
    }

    #[test]
    fn the_deployer_waits_for_everything_the_agent_may_still_do() {
        for s in hosts() {
            let b = of(&s);
            // The rollback bound: the activate timeout, at least 300 s.
            assert_eq!(b.rollback, s.timeouts.activate.max(300), "{b:?}");
            // The agent ends an activation by its bound and both graces.
            assert!(b.activation_wait() >= b.activate + 2 * KILL_GRACE_SECS + b.health, "{b:?}");
            // The deployer's wait for a rollback covers the agent's bound
            // of it, both kill graces included.
            assert!(b.rollback_wait() >= b.rollback + 2 * KILL_GRACE_SECS, "{b:?}");
            // After the confirmation: the window, then a rollback.
            assert!(b.confirm_wait() >= b.window + b.rollback_end(), "{b:?}");
        }
    }

    #[test]
    fn a_short_confirm_timeout_is_raised_and_said() {
        let b = of(&spec(600, 3, &[]));
        assert_eq!((b.asked_window, b.window), (3, MIN_WINDOW_SECS));
        let note = b.window_note().unwrap();
        assert!(note.contains("3 s") && note.contains("waits 15 s"), "{note}");
        assert_eq!(of(&spec(600, 30, &[])).window_note(), None);
        // Health checks count toward the window.
        let b = of(&spec(600, 3, &[(20, 2)]));
        assert_eq!((b.window, b.window_note()), (25, None));
    }

    #[test]
    fn the_largest_timeouts_do_not_overflow() {
        let b = of(&spec(u64::MAX, u64::MAX, &[(u64::MAX, u64::MAX)]));
        assert_eq!(b.window, u64::MAX);
        assert_eq!(
            (b.hard_window(), b.confirm_wait(), b.activation_wait()),
            (u64::MAX, u64::MAX, u64::MAX)
        );
    }
}
