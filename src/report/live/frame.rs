//! The text of the live display, as lines: the area redrawn in place (the
//! counts, then one line per host at work that fits the terminal) and the
//! lines printed above it for good (a host's result, a failing host's last
//! output lines). Pure: the terminal's size and the time are passed in.

use std::time::{Duration, Instant};

use console::{measure_text_width, truncate_str};

use super::state::{one_line, Counts, HostState, State, Status};
use crate::events::{HostReport, Outcome, Phase};
use crate::report::{fmt_duration, Paint};

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// The widest phase name (`self-check`).
const PHASE_WIDTH: usize = 10;

/// Host names longer than this are cut in the live lines.
const MAX_NAME_WIDTH: usize = 24;

/// The terminal, in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Screen {
    pub width: usize,
    pub height: usize,
}

/// The area redrawn in place: the counts, then the hosts at work, the
/// longest-running first, as many as fit. When some do not fit, the last
/// line counts them by phase. Never taller than the terminal less a line,
/// never wider than it.
pub fn frame(state: &State, now: Instant, screen: Screen, paint: Paint) -> Vec<String> {
    let Some(run_started) = state.started else { return Vec::new() };
    let spinner = SPINNER
        [(now.saturating_duration_since(run_started).as_millis() / 100) as usize % SPINNER.len()];
    let elapsed = now.saturating_duration_since(run_started);
    let mut lines = vec![header(&state.counts(), Some(elapsed), paint)];
    let active = state.active();
    let room = screen.height.saturating_sub(2);
    let shown = if active.len() <= room { active.len() } else { room.saturating_sub(1) };
    let name_width = name_width(state);
    for h in &active[..shown] {
        lines.push(host_line(h, spinner, name_width, now, paint));
    }
    if shown < active.len() {
        lines.push(more_line(&active[shown..], paint));
    }
    lines.into_iter().map(|l| fit(&l, screen.width)).collect()
}

/// `12 host(s): 3 queued, 4 running, 2 deployed, ... (42s)`: how long the
/// run has taken when `elapsed` is given; the rare outcomes are only named
/// when some host has them.
pub fn header(c: &Counts, elapsed: Option<Duration>, paint: Paint) -> String {
    let count = |n: usize, what: &str, color: fn(Paint, &str) -> String| {
        let text = format!("{n} {what}");
        if n > 0 {
            color(paint, &text)
        } else {
            text
        }
    };
    let mut parts = vec![
        count(c.queued, "queued", |_, s| s.to_string()),
        count(c.running, "running", Paint::cyan),
        count(c.deployed, "deployed", Paint::green),
        count(c.up_to_date, "up to date", Paint::green),
        count(c.failed, "failed", Paint::red),
        count(c.rolled_back, "rolled back", Paint::yellow),
    ];
    for (n, what) in [
        (c.deployed_then_failed, "deployed, then failed"),
        (c.unconfirmed, "not confirmed"),
        (c.superseded, "superseded"),
        (c.unknown, "UNKNOWN STATE"),
        (c.cancelled, "cancelled"),
        (c.skipped, "skipped"),
        (c.unchecked, "unchecked"),
    ] {
        if n > 0 {
            parts.push(count(n, what, Paint::red));
        }
    }
    let time = elapsed.map(|d| format!(" ({})", fmt_elapsed(d))).unwrap_or_default();
    format!("{} {}{}", paint.bold(&format!("{} host(s):", c.hosts)), parts.join(", "), time)
}

/// `⠋ web-1   build        12s  building '/nix/store/…'`
fn host_line(
    h: &HostState,
    spinner: &str,
    name_width: usize,
    now: Instant,
    paint: Paint,
) -> String {
    let phase = match h.status {
        Status::Running(p) => p,
        _ => Phase::Connect,
    };
    let elapsed = h.started.map(|s| now.saturating_duration_since(s)).unwrap_or_default();
    let name = pad(&truncate_str(&h.label, name_width, "…"), name_width);
    let mut line = format!(
        "{} {} {} {:>6}",
        paint.cyan(spinner),
        paint.bold(&name),
        paint.yellow(&pad(phase.as_str(), PHASE_WIDTH)),
        fmt_elapsed(elapsed)
    );
    if let Some(latest) = &h.latest {
        line.push_str("  ");
        line.push_str(&paint.dim(latest));
    }
    line
}

/// `… 63 more running: 40 build, 23 copy`
fn more_line(hidden: &[&HostState], paint: Paint) -> String {
    let by_phase: Vec<String> = Phase::ALL
        .iter()
        .filter_map(|p| {
            let n = hidden.iter().filter(|h| h.status == Status::Running(*p)).count();
            (n > 0).then(|| format!("{n} {p}"))
        })
        .collect();
    paint.dim(&format!("… {} more running: {}", hidden.len(), by_phase.join(", ")))
}

/// What stays above the live area once a host has finished: its result
/// line and, unless it succeeded, the rest of its message and its last
/// output lines.
pub fn finished_lines(h: &HostState, report: &HostReport, paint: Paint) -> Vec<String> {
    let (mark, word) = match report.outcome {
        Outcome::Deployed | Outcome::UpToDate => ("✔", report.outcome.to_string()),
        Outcome::Failed => ("✘", "FAILED".to_string()),
        Outcome::DeployedThenFailed => ("✘", report.outcome.to_string().to_uppercase()),
        Outcome::RolledBack | Outcome::Unconfirmed | Outcome::Superseded => {
            ("↺", report.outcome.to_string().to_uppercase())
        }
        Outcome::Unknown => ("?", report.outcome.to_string()),
        Outcome::Cancelled | Outcome::Skipped | Outcome::Unchecked => {
            ("-", report.outcome.to_string())
        }
    };
    let secs = fmt_duration(report.duration);
    let head = format!("{} {}", paint.outcome(report.outcome, mark), paint.bold(&h.label));
    let success = report.outcome.is_success();
    let Some(message) = report.message.as_deref().filter(|_| !success) else {
        return vec![format!("{head} {} ({secs})", paint.outcome(report.outcome, &word))];
    };
    let phase = report.phase.map(|p| p.as_str()).unwrap_or("-");
    let mut message = message.lines();
    let mut lines = vec![format!(
        "{head} {} in {phase} ({secs}): {}",
        paint.outcome(report.outcome, &word),
        message.next().unwrap_or("")
    )];
    let indent = " ".repeat(measure_text_width(&h.label) + 5);
    lines.extend(message.map(|l| format!("{indent}{l}")));
    if !h.tail.is_empty() {
        let shown = h.tail.len();
        lines.push(
            paint.dim(&format!("  {}: last {shown} of {} output line(s):", h.label, h.lines)),
        );
        lines.extend(h.tail.iter().map(|l| format!("  {} {l}", paint.dim("│"))));
    }
    lines
}

/// `deploy-flake: run ID: N host(s): a, b, …`, cut to one line.
pub fn run_started_line(run_id: &str, hosts: &[String], width: usize) -> String {
    let names: Vec<String> = hosts.iter().map(|h| one_line(h)).collect();
    fit(
        &format!("deploy-flake: run {run_id}: {} host(s): {}", hosts.len(), names.join(", ")),
        width,
    )
}

/// `12s`, `3m05s`, `1h02m`.
pub fn fmt_elapsed(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The width of the host column: the longest name, within bounds.
fn name_width(state: &State) -> usize {
    state
        .hosts()
        .iter()
        .map(|h| measure_text_width(&h.label))
        .max()
        .unwrap_or(0)
        .min(MAX_NAME_WIDTH)
}

fn pad(s: &str, width: usize) -> String {
    format!("{s}{}", " ".repeat(width.saturating_sub(measure_text_width(s))))
}

/// `line` cut to `width` cells (escape sequences kept whole), so that no
/// line of the live area wraps.
fn fit(line: &str, width: usize) -> String {
    truncate_str(line, width.max(1), "…").into_owned()
}
