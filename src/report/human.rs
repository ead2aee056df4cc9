//! The plain renderer: one line per event, tagged with its host, and the
//! end-of-run summary table. What a pipe, a log file or `--progress plain`
//! gets; colored only when asked to be.

use std::time::Duration;

use super::paint::Paint;
use crate::events::{Event, HostReport};

/// Human-readable, one line per event, every line tagged with its host.
pub struct Human {
    width: usize,
    /// A staged rollout's waves (host names), for the summary.
    waves: Option<Vec<Vec<String>>>,
    paint: Paint,
}

impl Default for Human {
    fn default() -> Self {
        Human::new()
    }
}

impl Human {
    pub fn new() -> Human {
        Human::with_paint(Paint::new(false))
    }

    /// Colored phases and outcomes when `paint` is on.
    pub fn with_paint(paint: Paint) -> Human {
        Human { width: 0, waves: None, paint }
    }

    /// The text for one event (possibly several lines, possibly none).
    pub fn render(&mut self, e: &Event) -> String {
        let tag = |h: &str, w: usize| {
            format!("[{h}]{:pad$}", "", pad = w.saturating_sub(h.chars().count()))
        };
        match e {
            Event::RunStarted { run_id, hosts, waves } => {
                self.width = hosts.iter().map(|h| h.chars().count()).max().unwrap_or(0);
                self.waves = waves.clone();
                let mut s = format!(
                    "deploy-flake: run {run_id}: {} host(s): {}\n",
                    hosts.len(),
                    hosts.join(", ")
                );
                if let Some(waves) = waves {
                    let list: Vec<String> = waves.iter().map(|w| w.join(", ")).collect();
                    s += &format!("deploy-flake: {} waves: {}\n", waves.len(), list.join(" | "));
                }
                s
            }
            Event::WaveStarted { .. }
            | Event::WaveFinished { .. }
            | Event::SoakStarted { .. }
            | Event::SoakFinished { .. }
            | Event::RolloutHalted { .. } => rollout_line(e),
            Event::PhaseStarted { host, phase } => {
                format!("{} {}\n", tag(host, self.width), self.paint.cyan(phase.as_str()))
            }
            Event::PhaseFinished { .. } => String::new(),
            Event::Output { host, line, .. } => format!("{} | {line}\n", tag(host, self.width)),
            Event::Note { host, text } => format!("{} {text}\n", tag(host, self.width)),
            // The host's final line says it, with the reason.
            Event::RolledBack { .. } => String::new(),
            // `status` and `diff` print their own tables and summaries.
            Event::HostStatus { .. } | Event::HostDiff { .. } => String::new(),
            Event::HostFinished { report } => {
                let t = tag(&report.host, self.width);
                let secs = fmt_duration(report.duration);
                match (&report.message, report.outcome.is_success()) {
                    (None, _) | (Some(_), true) => format!(
                        "{t} {} ({secs})\n",
                        self.paint.outcome(report.outcome, &report.outcome.to_string())
                    ),
                    (Some(m), false) => format!(
                        "{t} {} in {} ({secs}): {}\n",
                        self.paint
                            .outcome(report.outcome, &report.outcome.to_string().to_uppercase()),
                        report.phase.map(|p| p.as_str()).unwrap_or("-"),
                        m.replace('\n', &format!("\n{t}   "))
                    ),
                }
            }
            Event::RunFinished { reports, exit_code, duration } => {
                summary_with(reports, self.waves.as_deref(), *exit_code, *duration, self.paint)
            }
        }
    }
}

/// The lines of a staged rollout's events (`==` marks the rollout's own).
pub(super) fn rollout_line(e: &Event) -> String {
    match e {
        Event::WaveStarted { wave, waves, canary, hosts } => format!(
            "== wave {wave}/{waves}{}: {}\n",
            if *canary { " (canary)" } else { "" },
            hosts.join(", ")
        ),
        Event::WaveFinished { wave, waves, failed, duration } => format!(
            "== wave {wave}/{waves} ended in {}: {}\n",
            fmt_duration(*duration),
            if failed.is_empty() {
                "no host failed".to_string()
            } else {
                format!("{} failed: {}", failed.len(), failed.join(", "))
            }
        ),
        Event::SoakStarted { wave, seconds, hosts } => format!(
            "== soak: wave {wave} runs for {seconds} s, then {} checked again\n",
            hosts.join(", ")
        ),
        Event::SoakFinished { wave, interrupted: true, .. } => {
            format!("== soak of wave {wave} interrupted: its hosts were not checked again\n")
        }
        Event::SoakFinished { wave, passed, failed, .. } => {
            let mut s = format!("== soak of wave {wave}: ");
            if !passed.is_empty() {
                s += &format!("passed: {}", passed.join(", "));
            }
            for f in failed {
                s += &format!("\n== soak of wave {wave}: {} FAILED: {}", f.host, f.message);
            }
            s + "\n"
        }
        Event::RolloutHalted { wave, failed, max_failures, budget, skipped } => format!(
            "== rollout halted after wave {wave}: {} failed ({}), more than --max-failures \
             {max_failures} allows ({budget}); not started: {}\n",
            failed.len(),
            failed.join(", "),
            skipped.join(", ")
        ),
        _ => String::new(),
    }
}

/// The end-of-run table: host, (its wave,) result, phase reached,
/// duration, system.
pub fn summary(
    reports: &[HostReport],
    waves: Option<&[Vec<String>]>,
    exit_code: u8,
    duration: Duration,
) -> String {
    summary_with(reports, waves, exit_code, duration, Paint::new(false))
}

/// The summary table, its results colored when `paint` is on (the columns
/// are aligned on the text without its colors).
pub fn summary_with(
    reports: &[HostReport],
    waves: Option<&[Vec<String>]>,
    exit_code: u8,
    duration: Duration,
    paint: Paint,
) -> String {
    let wave_of = |host: &str| {
        let w = waves?.iter().position(|w| w.iter().any(|h| h == host))?;
        Some(format!("{}", w + 1))
    };
    let mut rows =
        vec![["HOST".to_string(), "RESULT".into(), "PHASE".into(), "TIME".into(), "SYSTEM".into()]];
    if waves.is_some() {
        rows[0][0] = "HOST (WAVE)".into();
    }
    for r in reports {
        rows.push([
            match wave_of(&r.host) {
                Some(w) => format!("{} ({w})", r.host),
                None => r.host.clone(),
            },
            r.outcome.to_string(),
            r.phase.map(|p| p.as_str().to_string()).unwrap_or_else(|| "-".into()),
            fmt_duration(r.duration),
            r.system.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::from("\n");
    for (i, row) in rows.iter().enumerate() {
        let mut line: Vec<String> =
            row.iter().zip(widths).map(|(c, w)| format!("{c:w$}")).collect();
        if let Some(r) = i.checked_sub(1).map(|i| &reports[i]) {
            line[1] = paint.outcome(r.outcome, &line[1]);
        }
        s.push_str(line.join("  ").trim_end());
        s.push('\n');
    }
    let ok = reports.iter().filter(|r| r.outcome.is_success()).count();
    s.push_str(&format!(
        "\n{ok} of {} host(s) succeeded in {}; exit code {exit_code}\n",
        reports.len(),
        fmt_duration(duration)
    ));
    s
}

pub fn fmt_duration(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Outcome, Phase};

    fn report(host: &str, outcome: Outcome, phase: Phase, msg: Option<&str>) -> HostReport {
        HostReport {
            host: host.into(),
            outcome,
            phase: Some(phase),
            duration: Duration::from_millis(1500),
            system: if outcome.is_success() { Some("/nix/store/x-sys".into()) } else { None },
            boot: None,
            needs_reboot: None,
            before: None,
            reason: None,
            message: msg.map(String::from),
            provenance: Default::default(),
        }
    }

    #[test]
    fn lines_are_tagged_and_aligned() {
        let mut h = Human::new();
        h.render(&Event::RunStarted {
            run_id: "r1".into(),
            hosts: vec!["a".into(), "web-1".into()],
            waves: None,
        });
        assert_eq!(
            h.render(&Event::Output {
                host: "a".into(),
                phase: Phase::Build,
                line: "building".into()
            }),
            "[a]     | building\n"
        );
        assert_eq!(
            h.render(&Event::HostFinished {
                report: report(
                    "web-1",
                    Outcome::RolledBack,
                    Phase::Confirm,
                    Some("rolled back: x\ny")
                )
            }),
            "[web-1] ROLLED BACK in confirm (1.5s): rolled back: x\n[web-1]   y\n"
        );
        let rebooted = "rebooted into /nix/store/new, but system is degraded";
        let r = report("a", Outcome::DeployedThenFailed, Phase::Reboot, Some(rebooted));
        assert_eq!(
            h.render(&Event::HostFinished { report: r.clone() }),
            format!("[a]     DEPLOYED, THEN FAILED in reboot (1.5s): {rebooted}\n")
        );
        let table = summary(&[r], None, 1, Duration::from_secs(3));
        assert!(table.contains("\na     deployed, then failed  reboot"), "{table}");
    }

    #[test]
    fn summary_table() {
        let s = summary(
            &[
                report("a", Outcome::Deployed, Phase::Boot, None),
                report("bb", Outcome::Failed, Phase::Preflight, Some("degraded")),
            ],
            None,
            1,
            Duration::from_secs(3),
        );
        assert_eq!(
            s,
            "\nHOST  RESULT    PHASE      TIME  SYSTEM\na     deployed  boot       1.5s  /nix/store/x-sys\nbb    failed    preflight  1.5s  -\n\n1 of 2 host(s) succeeded in 3.0s; exit code 1\n"
        );
    }

    #[test]
    fn a_staged_run_shows_each_host_s_wave() {
        let waves = vec![vec!["bb".to_string()], vec!["a".to_string()]];
        let s = summary(
            &[
                report("a", Outcome::Skipped, Phase::Connect, Some("halted")),
                report("bb", Outcome::Failed, Phase::Activate, Some("x")),
            ],
            Some(&waves),
            1,
            Duration::from_secs(3),
        );
        assert!(s.contains("HOST (WAVE)"), "{s}");
        assert!(s.contains("a (2)        skipped"), "{s}");
        assert!(s.contains("bb (1)       failed "), "{s}");
    }

    #[test]
    fn colored_lines_are_the_plain_lines_with_sgr_around_words() {
        let events = [
            Event::RunStarted {
                run_id: "r1".into(),
                hosts: vec!["a".into(), "bb".into()],
                waves: None,
            },
            Event::PhaseStarted { host: "a".into(), phase: Phase::Build },
            Event::HostFinished { report: report("a", Outcome::Deployed, Phase::Boot, None) },
            Event::HostFinished {
                report: report("bb", Outcome::Failed, Phase::Preflight, Some("degraded")),
            },
            Event::RunFinished {
                reports: vec![
                    report("a", Outcome::Deployed, Phase::Boot, None),
                    report("bb", Outcome::Failed, Phase::Preflight, Some("degraded")),
                ],
                exit_code: 1,
                duration: Duration::from_secs(3),
            },
        ];
        let (mut plain, mut colored) = (Human::new(), Human::with_paint(Paint::new(true)));
        for e in &events {
            let (p, c) = (plain.render(e), colored.render(e));
            assert!(!p.contains('\x1b'), "{p:?}");
            assert_eq!(console::strip_ansi_codes(&c), p);
            if !matches!(e, Event::RunStarted { .. }) {
                assert!(c.contains("\x1b["), "{c:?}");
            }
        }
    }
}
