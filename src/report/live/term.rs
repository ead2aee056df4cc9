//! Where the live display draws: the terminal on stdout (through one
//! buffer flushed once per redraw), or any other `TermLike` in tests.

use std::io;
use std::sync::Arc;

use console::Term;
use indicatif::TermLike;

/// A `TermLike` that the display's progress bar and its final text share.
#[derive(Debug, Clone)]
pub struct SharedTerm(pub Arc<dyn TermLike>);

/// stdout as a terminal: its size from the terminal itself, else from
/// `COLUMNS`/`LINES`, else 80x24. Buffered: a redraw is one write.
#[derive(Debug)]
pub struct StdoutTerm {
    term: Term,
}

impl StdoutTerm {
    pub fn new() -> StdoutTerm {
        StdoutTerm { term: Term::buffered_stdout() }
    }

    /// (rows, columns)
    fn size(&self) -> (u16, u16) {
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u16>().ok());
        self.term
            .size_checked()
            .filter(|&(rows, cols)| rows > 0 && cols > 0)
            .unwrap_or_else(|| (env("LINES").unwrap_or(24), env("COLUMNS").unwrap_or(80)))
    }
}

impl Default for StdoutTerm {
    fn default() -> Self {
        StdoutTerm::new()
    }
}

impl TermLike for StdoutTerm {
    fn width(&self) -> u16 {
        self.size().1
    }

    fn height(&self) -> u16 {
        self.size().0
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.term.move_cursor_up(n)
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.term.move_cursor_down(n)
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.term.move_cursor_right(n)
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.term.move_cursor_left(n)
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        self.term.write_line(s)
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        self.term.write_str(s)
    }

    fn clear_line(&self) -> io::Result<()> {
        self.term.clear_line()
    }

    fn flush(&self) -> io::Result<()> {
        self.term.flush()
    }
}

impl TermLike for SharedTerm {
    fn width(&self) -> u16 {
        self.0.width()
    }

    fn height(&self) -> u16 {
        self.0.height()
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_up(n)
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_down(n)
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_right(n)
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        self.0.move_cursor_left(n)
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        self.0.write_line(s)
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        self.0.write_str(s)
    }

    fn clear_line(&self) -> io::Result<()> {
        self.0.clear_line()
    }

    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
}
