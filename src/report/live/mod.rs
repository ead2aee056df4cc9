//! The live display on a terminal: the counts and a line per host at work,
//! redrawn in place (at most ten times a second); finished hosts' results,
//! and a failing host's last output lines, printed above it for good; the
//! summary table at the end.
//!
//! It runs in the output thread only: the engine queues events and never
//! waits for the terminal. The thread takes in everything queued before
//! each redraw, so a slow terminal costs redraws, never events.

mod frame;
mod state;
mod term;
#[cfg(test)]
mod tests;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle, TermLike};

pub use frame::{fmt_elapsed, Screen};
pub use state::{Counts, State, Status, TAIL};
pub use term::{SharedTerm, StdoutTerm};

use super::human::rollout_line;
use super::{summary_with, Paint};
use crate::events::Event;

/// The shortest time between two redraws.
pub const REDRAW: Duration = Duration::from_millis(100);

/// The display: what it knows, and the terminal it draws on.
pub struct Live {
    state: State,
    paint: Paint,
    term: SharedTerm,
    /// indicatif's bar: it draws `area` (and prints above it).
    bar: ProgressBar,
    /// The live area's text, read by the bar when it draws: changing it
    /// draws nothing, so a redraw is one draw.
    area: Arc<Mutex<String>>,
    /// Lines to print above the live area at the next redraw.
    above: Vec<String>,
    /// A staged rollout's waves, for the summary.
    waves: Option<Vec<Vec<String>>>,
}

impl Live {
    pub fn new(term: Arc<dyn TermLike>, paint: Paint) -> Live {
        let term = SharedTerm(term);
        let bar = ProgressBar::with_draw_target(
            None,
            ProgressDrawTarget::term_like(Box::new(term.clone())),
        );
        let area = Arc::new(Mutex::new(String::new()));
        let text = area.clone();
        let style = ProgressStyle::with_template("{area}").expect("a valid template").with_key(
            "area",
            move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&text.lock().unwrap_or_else(|e| e.into_inner()));
            },
        );
        bar.set_style(style);
        Live { state: State::new(), paint, term, bar, area, above: Vec::new(), waves: None }
    }

    /// On stdout.
    pub fn stdout(paint: Paint) -> Live {
        Live::new(Arc::new(StdoutTerm::new()), paint)
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Takes one event in: the state changes now, the screen at the next
    /// redraw.
    pub fn apply(&mut self, e: &Event, now: Instant) {
        match e {
            Event::RunStarted { run_id, hosts, waves } => {
                let width = self.screen().width;
                self.above.push(frame::run_started_line(run_id, hosts, width));
                self.waves = waves.clone();
            }
            // A staged rollout's waves, soaks and halt: a line above each.
            Event::WaveStarted { .. }
            | Event::WaveFinished { .. }
            | Event::SoakStarted { .. }
            | Event::SoakFinished { .. }
            | Event::RolloutHalted { .. } => {
                self.above.extend(rollout_line(e).lines().map(|l| self.paint.cyan(l)));
            }
            _ => {}
        }
        let paint = self.paint;
        if let Some(h) = self.state.apply(e, now) {
            if let Status::Done(report) = &h.status {
                self.above.extend(frame::finished_lines(h, report, paint));
            }
        }
    }

    fn screen(&self) -> Screen {
        Screen { width: self.term.width().into(), height: self.term.height().into() }
    }

    /// Redraws, once: what is due above the live area, then the area.
    pub fn draw(&mut self, now: Instant) {
        let lines = frame::frame(&self.state, now, self.screen(), self.paint);
        if lines.is_empty() {
            return;
        }
        *self.area.lock().unwrap_or_else(|e| e.into_inner()) = lines.join("\n");
        if self.above.is_empty() {
            self.bar.tick();
        } else {
            self.bar.println(self.above.join("\n"));
            self.above.clear();
        }
    }

    /// The end: the last results, the live area replaced by the final
    /// counts, then the summary table.
    pub fn finish(mut self) {
        if !self.above.is_empty() {
            self.bar.println(self.above.join("\n"));
            self.above.clear();
        }
        self.bar.finish_and_clear();
        let mut text = String::new();
        if let Some(f) = &self.state.finished {
            let counts = self.state.counts();
            text.push_str(&frame::header(&counts, Some(f.duration), self.paint));
            text.push('\n');
            let waves = self.waves.as_deref();
            text.push_str(&summary_with(&f.reports, waves, f.exit_code, f.duration, self.paint));
        }
        for line in text.lines() {
            let _ = self.term.write_line(line);
        }
        let _ = self.term.flush();
    }
}

/// The output thread's loop: takes in every event queued, redraws at most
/// every `REDRAW`, and finishes once every sink is gone.
pub fn run(events: Receiver<Event>, mut live: Live) {
    let mut next = Instant::now();
    loop {
        match events.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Ok(e) => {
                live.apply(&e, Instant::now());
                for e in events.try_iter().take(10_000) {
                    live.apply(&e, Instant::now());
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let now = Instant::now();
        if now >= next {
            live.draw(now);
            next = now + REDRAW;
        }
    }
    live.finish();
}
