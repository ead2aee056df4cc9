//! Renderers: turn events into host-prefixed lines and a summary table,
//! or into a versioned JSON Lines stream. Pure consumers of `events`.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::events::{Event, HostReport, Sink, JSON_VERSION};

/// Human-readable, one line per event, every line tagged with its host.
pub struct Human {
    width: usize,
}

impl Default for Human {
    fn default() -> Self {
        Human::new()
    }
}

impl Human {
    pub fn new() -> Human {
        Human { width: 0 }
    }

    /// The text for one event (possibly several lines, possibly none).
    pub fn render(&mut self, e: &Event) -> String {
        let tag = |h: &str, w: usize| {
            format!("[{h}]{:pad$}", "", pad = w.saturating_sub(h.chars().count()))
        };
        match e {
            Event::RunStarted { run_id, hosts } => {
                self.width = hosts.iter().map(|h| h.chars().count()).max().unwrap_or(0);
                format!(
                    "deploy-flake: run {run_id}: {} host(s): {}\n",
                    hosts.len(),
                    hosts.join(", ")
                )
            }
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
                summary(reports, *exit_code, *duration)
            }
        }
    }
}

/// The end-of-run table: host, result, phase reached, duration, system.
pub fn summary(reports: &[HostReport], exit_code: u8, duration: Duration) -> String {
    let mut rows =
        vec![["HOST".to_string(), "RESULT".into(), "PHASE".into(), "TIME".into(), "SYSTEM".into()]];
    for r in reports {
        rows.push([
            r.host.clone(),
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

/// One JSON object per line: the event with its `"v"` version.
pub fn json_line(e: &Event) -> String {
    let mut v = serde_json::to_value(e).expect("events serialize");
    if let Some(obj) = v.as_object_mut() {
        obj.insert("v".into(), JSON_VERSION.into());
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
    let (tx, rx) = std::sync::mpsc::channel::<Event>();
    let writer = std::thread::spawn(move || {
        let mut human = Human::new();
        let mut out = std::io::stdout();
        for e in rx {
            let text = if json { json_line(&e) } else { human.render(&e) };
            if !text.is_empty() && (out.write_all(text.as_bytes()).is_err() || out.flush().is_err())
            {
                // Nobody reads any more (a closed pipe): drop what is left.
                continue;
            }
        }
    });
    let sink: Sink = Arc::new(move |e: Event| {
        let _ = tx.send(e);
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
            1,
            Duration::from_secs(3),
        );
        assert_eq!(
            s,
            "\nHOST  RESULT    PHASE      TIME  SYSTEM\na     deployed  boot       1.5s  /nix/store/x-sys\nbb    failed    preflight  1.5s  -\n\n1 of 2 host(s) succeeded in 3.0s; exit code 1\n"
        );
    }

    #[test]
    fn json_lines_carry_a_version() {
        let l = json_line(&Event::Note { host: "a".into(), text: "hi".into() });
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["event"], "note");
        assert_eq!(v["host"], "a");
    }
}
