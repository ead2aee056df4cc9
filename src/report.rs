//! Renderers: turn events into host-prefixed lines and a summary table,
//! or into a versioned JSON Lines stream. Pure consumers of `events`.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::events::{Event, HostReport, Sink, JSON_VERSION};

/// Human-readable, one line per event, every line tagged with its host.
pub struct Human {
    width: usize,
    /// A staged rollout's waves (host names), for the summary.
    waves: Option<Vec<Vec<String>>>,
}

impl Default for Human {
    fn default() -> Self {
        Human::new()
    }
}

impl Human {
    pub fn new() -> Human {
        Human { width: 0, waves: None }
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
            Event::PhaseStarted { host, phase } => format!("{} {phase}\n", tag(host, self.width)),
            Event::PhaseFinished { .. } => String::new(),
            Event::Output { host, line, .. } => format!("{} | {line}\n", tag(host, self.width)),
            Event::Note { host, text } => format!("{} {text}\n", tag(host, self.width)),
            // The host's final line says it, with the reason.
            Event::RolledBack { .. } => String::new(),
            Event::HostFinished { report } => {
                let t = tag(&report.host, self.width);
                let secs = fmt_duration(report.duration);
                match (&report.message, report.outcome.is_success()) {
                    (None, _) | (Some(_), true) => {
                        format!("{t} {} ({secs})\n", report.outcome.as_str())
                    }
                    (Some(m), false) => format!(
                        "{t} {} in {} ({secs}): {}\n",
                        report.outcome.as_str().to_uppercase(),
                        report.phase.map(|p| p.as_str()).unwrap_or("-"),
                        m.replace('\n', &format!("\n{t}   "))
                    ),
                }
            }
            Event::RunFinished { reports, exit_code, duration } => {
                summary(reports, self.waves.as_deref(), *exit_code, *duration)
            }
        }
    }
}

/// The lines of a staged rollout's events (`==` marks the rollout's own).
fn rollout_line(e: &Event) -> String {
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
            r.outcome.as_str().to_string(),
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
    for row in &rows {
        let line: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:w$}")).collect();
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

/// One JSON object per line: the event with its `"v"` version and `"ts"`,
/// when the engine emitted it (milliseconds since the Unix epoch).
pub fn json_line(e: &Event, at: SystemTime) -> String {
    let mut v = serde_json::to_value(e).expect("events serialize");
    if let Some(obj) = v.as_object_mut() {
        obj.insert("v".into(), JSON_VERSION.into());
        let ms = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        obj.insert("ts".into(), ms.into());
    }
    format!("{v}\n")
}

/// Where a run's output goes: a writer thread that renders events and
/// writes them to stdout. The engine only queues them, so a slow reader
/// (`deploy-flake | less`, a full pipe) never stalls a host — a stalled
/// confirmation would roll it back.
pub struct Output {
    writer: std::thread::JoinHandle<()>,
}

/// A sink that renders human lines (or JSON Lines) to stdout, and the
/// handle that waits for the last of them to be written.
pub fn stdout(json: bool) -> (Sink, Output) {
    let (tx, rx) = std::sync::mpsc::channel::<(SystemTime, Event)>();
    let writer = std::thread::spawn(move || {
        let mut human = Human::new();
        let mut out = std::io::stdout();
        for (at, e) in rx {
            let text = if json { json_line(&e, at) } else { human.render(&e) };
            if !text.is_empty() && (out.write_all(text.as_bytes()).is_err() || out.flush().is_err())
            {
                // Nobody reads any more (a closed pipe): drop what is left.
                continue;
            }
        }
    });
    let sink: Sink = Arc::new(move |e: Event| {
        let _ = tx.send((SystemTime::now(), e));
    });
    (sink, Output { writer })
}

impl Output {
    /// Wait until everything the run said is written (every sink dropped).
    pub fn finish(self) {
        let _ = self.writer.join();
    }
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
    fn json_lines_carry_a_version_and_when_they_were_emitted() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let l = json_line(&Event::Note { host: "a".into(), text: "hi".into() }, at);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["ts"], 1_700_000_000_123u64);
        assert_eq!(v["event"], "note");
        assert_eq!(v["host"], "a");
    }
}
