//! Text for a terminal: what came from a target (its output, failure
//! messages, unit names, records) may hold control sequences that move
//! the cursor, rewrite earlier lines, set the window title or write the
//! clipboard (OSC 52). Every human renderer shows such characters escaped
//! (`\x1b`), never raw; `--json` keeps the text exact (JSON escapes it).
//! Pure.

use std::borrow::Cow;

use crate::events::{Event, HostReport, SoakFailure};

/// `s` with every control character but newline and tab, and every
/// character that reorders text (bidirectional overrides), escaped.
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            c if !unsafe_char(c) => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// One line: a newline is escaped too.
pub fn line(s: &str) -> Cow<'_, str> {
    if s.contains('\n') {
        Cow::Owned(text(s).replace('\n', "\\x0a"))
    } else {
        text(s)
    }
}

fn unsafe_char(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t')
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn own(s: &mut String) {
    if let Cow::Owned(o) = text(s) {
        *s = o;
    }
}

fn own_line(s: &mut String) {
    if let Cow::Owned(o) = line(s) {
        *s = o;
    }
}

fn own_all(v: &mut [String]) {
    v.iter_mut().for_each(own_line);
}

fn report(r: &mut HostReport) {
    own_line(&mut r.host);
    for s in [&mut r.system, &mut r.boot, &mut r.before].into_iter().flatten() {
        own_line(s);
    }
    if let Some(parts) = r.needs_reboot.as_mut() {
        own_all(parts);
    }
    if let Some(m) = r.message.as_mut() {
        own(m);
    }
}

/// The event with every text in it safe for a terminal (see [`text`]).
pub fn event(mut e: Event) -> Event {
    match &mut e {
        Event::RunStarted { hosts, waves, .. } => {
            own_all(hosts);
            waves.iter_mut().flatten().for_each(|w| own_all(w));
        }
        Event::WaveStarted { hosts, .. } | Event::SoakStarted { hosts, .. } => own_all(hosts),
        Event::WaveFinished { failed, .. } => own_all(failed),
        Event::SoakFinished { passed, failed, .. } => {
            own_all(passed);
            for SoakFailure { host, message } in failed {
                own_line(host);
                own(message);
            }
        }
        Event::RolloutHalted { failed, skipped, max_failures, .. } => {
            own_all(failed);
            own_all(skipped);
            own_line(max_failures);
        }
        Event::PhaseStarted { host, .. } | Event::PhaseFinished { host, .. } => own_line(host),
        Event::Output { host, line, .. } | Event::Note { host, text: line } => {
            own_line(host);
            own_line(line);
        }
        Event::RolledBack { host, reason, .. } => {
            own_line(host);
            own(reason);
        }
        Event::HostFinished { report: r } => report(r),
        Event::RunFinished { reports, .. } => reports.iter_mut().for_each(report),
        // Data for machines: `--json` prints them, no terminal does.
        Event::HostStatus { host, .. } | Event::HostDiff { host, .. } => own_line(host),
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Outcome, Phase, Reason};

    const HOSTILE: &str = "title \u{1b}]0;pwned\u{7} clear \u{1b}[2J\r clip \u{1b}]52;c;eA==\u{7} \u{9b}31m \u{202e}txt";

    #[test]
    fn control_sequences_are_shown_escaped() {
        assert_eq!(
            line(HOSTILE),
            r"title \x1b]0;pwned\x07 clear \x1b[2J\x0d clip \x1b]52;c;eA==\x07 \x9b31m \u{202e}txt"
        );
        assert_eq!(text("a\n\tb"), "a\n\tb");
        assert_eq!(line("a\nb"), r"a\x0ab");
        assert!(matches!(text("plain é ✔"), Cow::Borrowed(_)));
    }

    #[test]
    fn every_text_of_an_event_is_made_safe() {
        let e = event(Event::Output {
            host: "h\u{1b}".into(),
            phase: Phase::Activate,
            line: HOSTILE.into(),
        });
        let Event::Output { host, line, .. } = e else { panic!() };
        assert_eq!(host, r"h\x1b");
        assert!(!line.contains('\u{1b}'), "{line}");
        let r = HostReport {
            host: "h".into(),
            outcome: Outcome::Failed,
            phase: Some(Phase::SelfCheck),
            duration: Default::default(),
            system: None,
            boot: None,
            needs_reboot: None,
            before: None,
            reason: Some(Reason::SelfCheck),
            message: Some(format!("failed:\n{HOSTILE}")),
            provenance: Default::default(),
        };
        let Event::HostFinished { report } = event(Event::HostFinished { report: r }) else {
            panic!()
        };
        let m = report.message.unwrap();
        assert!(m.starts_with("failed:\ntitle \\x1b]0;") && !m.contains('\u{7}'), "{m}");
    }
}
