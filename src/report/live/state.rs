//! What the live display knows about a run, from its events alone: every
//! host's place in the pipeline, its latest output line and the last lines
//! a failing host shows. Pure: no terminal, time is passed in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::events::{Event, HostReport, Outcome, Phase};

/// How many output lines of a host are kept (and shown when it fails).
pub const TAIL: usize = 20;

/// Where a host is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Named by `run-started`, no phase yet.
    Queued,
    Running(Phase),
    Done(HostReport),
}

#[derive(Debug, Clone)]
pub struct HostState {
    pub name: String,
    /// The name as shown: without what would move the cursor.
    pub label: String,
    pub status: Status,
    /// When its first phase started.
    pub started: Option<Instant>,
    /// Its latest output line or note, as one line of plain text.
    pub latest: Option<String>,
    /// Its last `TAIL` output lines and notes, as plain text.
    pub tail: VecDeque<String>,
    /// How many lines went into `tail` in all.
    pub lines: usize,
}

/// How many hosts are where: the live header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    pub hosts: usize,
    pub queued: usize,
    pub running: usize,
    pub deployed: usize,
    pub up_to_date: usize,
    pub failed: usize,
    pub rolled_back: usize,
    pub unconfirmed: usize,
    pub superseded: usize,
    pub unknown: usize,
    pub cancelled: usize,
    pub skipped: usize,
    pub unchecked: usize,
    pub deployed_then_failed: usize,
}

/// The end of the run, as `run-finished` says it.
#[derive(Debug, Clone)]
pub struct Finished {
    pub reports: Vec<HostReport>,
    pub exit_code: u8,
    pub duration: Duration,
}

#[derive(Debug, Default)]
pub struct State {
    pub run_id: Option<String>,
    /// When `run-started` arrived.
    pub started: Option<Instant>,
    hosts: Vec<HostState>,
    index: HashMap<String, usize>,
    pub finished: Option<Finished>,
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// Takes one event in; returns the host that has just finished, if any
    /// (its result goes above the live area).
    pub fn apply(&mut self, e: &Event, now: Instant) -> Option<&HostState> {
        match e {
            Event::RunStarted { run_id, hosts, .. } => {
                self.run_id = Some(run_id.clone());
                self.started = Some(now);
                for h in hosts {
                    self.host(h);
                }
            }
            Event::PhaseStarted { host, phase } => {
                let h = self.host(host);
                h.started.get_or_insert(now);
                h.status = Status::Running(*phase);
            }
            // The host's result says why it rolled back; the rollout's own
            // events are lines above the live area.
            Event::PhaseFinished { .. }
            | Event::RolledBack { .. }
            | Event::WaveStarted { .. }
            | Event::WaveFinished { .. }
            | Event::SoakStarted { .. }
            | Event::SoakFinished { .. }
            | Event::RolloutHalted { .. }
            | Event::HostStatus { .. }
            | Event::HostDiff { .. } => {}
            Event::Output { host, line, .. } => self.host(host).push(line),
            Event::Note { host, text } => self.host(host).push(text),
            Event::HostFinished { report } => {
                let h = self.host(&report.host);
                h.status = Status::Done(report.clone());
                return Some(h);
            }
            Event::RunFinished { reports, exit_code, duration } => {
                self.finished = Some(Finished {
                    reports: reports.clone(),
                    exit_code: *exit_code,
                    duration: *duration,
                });
            }
        }
        None
    }

    /// The host named `name`, added (queued) if no event named it before.
    fn host(&mut self, name: &str) -> &mut HostState {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.hosts.push(HostState {
                    name: name.to_string(),
                    label: one_line(name),
                    status: Status::Queued,
                    started: None,
                    latest: None,
                    tail: VecDeque::new(),
                    lines: 0,
                });
                self.index.insert(name.to_string(), self.hosts.len() - 1);
                self.hosts.len() - 1
            }
        };
        &mut self.hosts[i]
    }

    /// Every host, in the run's order.
    pub fn hosts(&self) -> &[HostState] {
        &self.hosts
    }

    /// The hosts at work, the longest-running first (then in run order):
    /// the lines stay put while hosts come and go.
    pub fn active(&self) -> Vec<&HostState> {
        let mut active: Vec<(usize, &HostState)> = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| matches!(h.status, Status::Running(_)))
            .collect();
        active.sort_by_key(|(i, h)| (h.started, *i));
        active.into_iter().map(|(_, h)| h).collect()
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts { hosts: self.hosts.len(), ..Counts::default() };
        for h in &self.hosts {
            let n = match &h.status {
                Status::Queued => &mut c.queued,
                Status::Running(_) => &mut c.running,
                Status::Done(r) => match r.outcome {
                    Outcome::Deployed => &mut c.deployed,
                    Outcome::UpToDate => &mut c.up_to_date,
                    Outcome::Failed => &mut c.failed,
                    Outcome::RolledBack => &mut c.rolled_back,
                    Outcome::Unconfirmed => &mut c.unconfirmed,
                    Outcome::Superseded => &mut c.superseded,
                    Outcome::Unknown => &mut c.unknown,
                    Outcome::Cancelled => &mut c.cancelled,
                    Outcome::Skipped => &mut c.skipped,
                    Outcome::Unchecked => &mut c.unchecked,
                    Outcome::DeployedThenFailed => &mut c.deployed_then_failed,
                },
            };
            *n += 1;
        }
        c
    }
}

impl HostState {
    fn push(&mut self, line: &str) {
        let line = one_line(line);
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        self.lines += 1;
        if !line.trim().is_empty() {
            self.latest = Some(line);
        }
    }
}

/// A command's line as one line of plain text: what a carriage return
/// overwrote is gone, and so are escape sequences and control characters
/// (they would move the cursor inside the live area).
pub fn one_line(line: &str) -> String {
    let last = line.split('\r').rev().find(|s| !s.is_empty()).unwrap_or("");
    console::strip_ansi_codes(last)
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn report(host: &str, outcome: Outcome, phase: Phase) -> HostReport {
        HostReport {
            host: host.into(),
            outcome,
            phase: Some(phase),
            duration: Duration::from_millis(2500),
            system: None,
            boot: None,
            needs_reboot: None,
            before: None,
            reason: None,
            message: (!outcome.is_success()).then(|| format!("{host} did not make it")),
            provenance: Default::default(),
        }
    }

    fn started(hosts: &[&str]) -> Event {
        Event::RunStarted {
            run_id: "r1".into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            waves: None,
        }
    }

    fn phase(host: &str, phase: Phase) -> Event {
        Event::PhaseStarted { host: host.into(), phase }
    }

    fn output(host: &str, line: &str) -> Event {
        Event::Output { host: host.into(), phase: Phase::Build, line: line.into() }
    }

    fn finished(r: HostReport) -> Event {
        Event::HostFinished { report: r }
    }

    #[test]
    fn counts_follow_the_events() {
        let t0 = Instant::now();
        let mut s = State::new();
        s.apply(&started(&["a", "b", "c", "d", "e", "f"]), t0);
        assert_eq!(s.counts(), Counts { hosts: 6, queued: 6, ..Counts::default() });
        for h in ["a", "b", "c", "d", "e"] {
            s.apply(&phase(h, Phase::Connect), t0);
        }
        s.apply(&finished(report("a", Outcome::Deployed, Phase::Boot)), t0);
        s.apply(&finished(report("b", Outcome::UpToDate, Phase::Build)), t0);
        s.apply(&finished(report("c", Outcome::Failed, Phase::Preflight)), t0);
        s.apply(&finished(report("d", Outcome::RolledBack, Phase::Confirm)), t0);
        assert_eq!(
            s.counts(),
            Counts {
                hosts: 6,
                queued: 1,
                running: 1,
                deployed: 1,
                up_to_date: 1,
                failed: 1,
                rolled_back: 1,
                ..Counts::default()
            }
        );
        let done = s.apply(&finished(report("f", Outcome::Cancelled, Phase::Connect)), t0);
        assert_eq!(done.map(|h| h.name.as_str()), Some("f"), "a finished host is handed back");
        assert_eq!((s.counts().queued, s.counts().cancelled), (0, 1));
    }

    #[test]
    fn active_hosts_longest_running_first() {
        let t0 = Instant::now();
        let mut s = State::new();
        s.apply(&started(&["a", "b", "c"]), t0);
        s.apply(&phase("c", Phase::Connect), t0);
        s.apply(&phase("a", Phase::Connect), t0 + Duration::from_secs(1));
        s.apply(&phase("b", Phase::Connect), t0 + Duration::from_secs(1));
        s.apply(&phase("c", Phase::Build), t0 + Duration::from_secs(2));
        let names: Vec<&str> = s.active().iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "b"]);
        assert_eq!(s.active()[0].status, Status::Running(Phase::Build));
    }

    #[test]
    fn the_last_twenty_lines_are_kept_and_the_latest_shown() {
        let t0 = Instant::now();
        let mut s = State::new();
        s.apply(&started(&["a"]), t0);
        for i in 1..=30 {
            s.apply(&output("a", &format!("line {i}")), t0);
        }
        s.apply(&output("a", "   "), t0);
        let a = &s.hosts()[0];
        assert_eq!(a.lines, 31);
        assert_eq!(a.tail.len(), TAIL);
        assert_eq!(a.tail.front().map(String::as_str), Some("line 12"));
        assert_eq!(a.latest.as_deref(), Some("line 30"), "a blank line keeps the latest");
    }

    #[test]
    fn lines_lose_what_would_move_the_cursor() {
        assert_eq!(one_line("50%\r100%\r"), "100%");
        assert_eq!(one_line("\x1b[1;31merror\x1b[0m:\tgone\x07"), "error: gone");
        assert_eq!(one_line("plain"), "plain");
    }

    #[test]
    fn a_name_is_shown_without_escapes() {
        let mut s = State::new();
        s.apply(&phase("evil\x1b[2J", Phase::Lock), Instant::now());
        assert_eq!(s.hosts()[0].label, "evil");
        assert_eq!(s.hosts()[0].name, "evil\x1b[2J");
    }

    #[test]
    fn hosts_named_only_by_later_events_are_counted() {
        let mut s = State::new();
        s.apply(&phase("x", Phase::Lock), Instant::now());
        assert_eq!(s.counts(), Counts { hosts: 1, running: 1, ..Counts::default() });
    }
}
