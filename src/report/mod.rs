//! Renderers: turn events into host-tagged lines and a summary table
//! (`human`), a live display on a terminal (`live`), or a versioned JSON
//! Lines stream. Pure consumers of `events`.

mod human;
pub mod live;
mod paint;
pub mod safe;

use std::io::Write;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use human::{fmt_duration, summary, summary_with, Human};
pub use paint::Paint;

use crate::events::{Event, Sink, JSON_VERSION};

/// How a run is shown on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// `--json`: one JSON object per event.
    Json,
    /// One line per event, tagged with its host; colored or not.
    Plain { color: bool },
    /// Redrawn in place on a terminal; colored or not.
    Live { color: bool },
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
/// (`deploy-flake | less`, a full pipe, a slow terminal) never stalls a
/// host — a stalled confirmation would roll it back.
pub struct Output {
    writer: std::thread::JoinHandle<()>,
}

/// A sink that renders events to stdout as `display` says, and the handle
/// that waits for the last of them to be written.
pub fn stdout(display: Display) -> (Sink, Output) {
    let (tx, rx) = std::sync::mpsc::channel::<(SystemTime, Event)>();
    let writer = std::thread::spawn(move || match display {
        Display::Json => write_lines(rx, |e, at| json_line(&e, at)),
        Display::Plain { color } => {
            let mut human = Human::with_paint(Paint::new(color));
            write_lines(rx, move |e, _| human.render(&safe::event(e)))
        }
        Display::Live { color } => {
            // What a target said is shown escaped, never raw (`safe`).
            let events = untimed(rx);
            live::run(events, live::Live::stdout(Paint::new(color)))
        }
    });
    let sink: Sink = Arc::new(move |e: Event| {
        let _ = tx.send((SystemTime::now(), e));
    });
    (sink, Output { writer })
}

/// The events without their times and safe for a terminal, as the live
/// display takes them.
fn untimed(rx: Receiver<(SystemTime, Event)>) -> Receiver<Event> {
    let (tx, events) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (_, e) in rx {
            if tx.send(safe::event(e)).is_err() {
                break;
            }
        }
    });
    events
}

/// Writes each event's text as it comes.
fn write_lines(
    rx: Receiver<(SystemTime, Event)>,
    mut render: impl FnMut(Event, SystemTime) -> String,
) {
    let mut out = std::io::stdout();
    for (at, e) in rx {
        let text = render(e, at);
        if !text.is_empty() && (out.write_all(text.as_bytes()).is_err() || out.flush().is_err()) {
            // Nobody reads any more (a closed pipe): drop what is left.
            continue;
        }
    }
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

    #[test]
    fn json_lines_carry_a_version_and_when_they_were_emitted() {
        let at = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let l = json_line(&Event::Note { host: "a".into(), text: "hi".into() }, at);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["ts"], 1_700_000_000_123u64);
        assert_eq!(v["event"], "note");
        assert_eq!(v["host"], "a");
    }
}
