//! `--progress` and `--color`: how a run is shown, decided from the flags,
//! whether stdout is a terminal and `NO_COLOR`.

use std::io::IsTerminal;

use clap::ValueEnum;

use crate::report::Display;

#[derive(Debug, Clone, clap::Args)]
pub struct DisplayArgs {
    /// How to show a run's progress: live (a line per host at work, redrawn
    /// in place; results above it), plain (one line per event, tagged with
    /// its host) or auto (live when stdout is a terminal, unless --json or
    /// -v is given).
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = Progress::Auto, global = true)]
    pub progress: Progress,

    /// Color the output: auto (when stdout is a terminal and NO_COLOR is
    /// unset or empty), always or never.
    #[arg(long, value_name = "WHEN", value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    Auto,
    Live,
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// What the choice depends on besides the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terminal {
    /// stdout is a terminal.
    pub stdout_tty: bool,
    /// stderr is a terminal (where `-v` logs).
    pub stderr_tty: bool,
    /// `NO_COLOR` is set to a non-empty value.
    pub no_color: bool,
    /// `TERM=dumb`: a terminal that cannot move its cursor.
    pub dumb: bool,
}

impl Terminal {
    /// This process's stdout and environment.
    pub fn current() -> Terminal {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        Terminal {
            stdout_tty: std::io::stdout().is_terminal(),
            stderr_tty: std::io::stderr().is_terminal(),
            no_color: set("NO_COLOR"),
            dumb: std::env::var_os("TERM").is_some_and(|t| t == "dumb"),
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("--progress live draws on a terminal: it cannot be combined with --json")]
pub struct LiveJsonConflict;

impl DisplayArgs {
    /// Whether `-v`'s log on stderr is colored: as `--color` says, and
    /// with `auto` only on a terminal (stderr's own) without `NO_COLOR`.
    pub fn log_color(&self, terminal: Terminal) -> bool {
        match self.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal.stderr_tty && !terminal.no_color && !terminal.dumb,
        }
    }

    /// The display of a run with `--json` (or not) and `-v` given `verbose`
    /// times. -v logs to the same terminal, so it keeps `auto` plain.
    pub fn resolve(
        &self,
        json: bool,
        verbose: u8,
        terminal: Terminal,
    ) -> Result<Display, LiveJsonConflict> {
        let color = match self.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => terminal.stdout_tty && !terminal.no_color && !terminal.dumb,
        };
        let live = match self.progress {
            Progress::Live if json => return Err(LiveJsonConflict),
            Progress::Live => true,
            Progress::Plain => false,
            Progress::Auto => terminal.stdout_tty && !terminal.dumb && !json && verbose == 0,
        };
        Ok(match (json, live) {
            (true, _) => Display::Json,
            (false, true) => Display::Live { color },
            (false, false) => Display::Plain { color },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTY: Terminal =
        Terminal { stdout_tty: true, stderr_tty: true, no_color: false, dumb: false };
    const PIPE: Terminal = Terminal { stdout_tty: false, ..TTY };

    fn args(progress: Progress, color: ColorChoice) -> DisplayArgs {
        DisplayArgs { progress, color }
    }

    #[test]
    fn auto_is_live_and_colored_on_a_terminal_only() {
        let auto = args(Progress::Auto, ColorChoice::Auto);
        assert_eq!(auto.resolve(false, 0, TTY), Ok(Display::Live { color: true }));
        assert_eq!(auto.resolve(false, 0, PIPE), Ok(Display::Plain { color: false }));
        assert_eq!(auto.resolve(true, 0, TTY), Ok(Display::Json));
        assert_eq!(auto.resolve(false, 1, TTY), Ok(Display::Plain { color: true }), "-v");
        let dumb = Terminal { dumb: true, ..TTY };
        assert_eq!(auto.resolve(false, 0, dumb), Ok(Display::Plain { color: false }));
    }

    #[test]
    fn no_color_wins_over_auto_but_not_over_always() {
        let no_color = Terminal { no_color: true, ..TTY };
        assert_eq!(
            args(Progress::Auto, ColorChoice::Auto).resolve(false, 0, no_color),
            Ok(Display::Live { color: false })
        );
        assert_eq!(
            args(Progress::Auto, ColorChoice::Always).resolve(false, 0, no_color),
            Ok(Display::Live { color: true })
        );
        assert_eq!(
            args(Progress::Plain, ColorChoice::Always).resolve(false, 0, PIPE),
            Ok(Display::Plain { color: true })
        );
        assert_eq!(
            args(Progress::Live, ColorChoice::Never).resolve(false, 0, TTY),
            Ok(Display::Live { color: false })
        );
    }

    #[test]
    fn the_log_is_colored_on_a_terminal_only_unless_asked() {
        let auto = args(Progress::Auto, ColorChoice::Auto);
        assert!(auto.log_color(TTY));
        let into_a_file = Terminal { stderr_tty: false, ..TTY };
        assert!(!auto.log_color(into_a_file), "-v 2>log");
        assert!(!auto.log_color(Terminal { no_color: true, ..TTY }), "NO_COLOR");
        assert!(!auto.log_color(Terminal { dumb: true, ..TTY }), "TERM=dumb");
        assert!(args(Progress::Auto, ColorChoice::Always).log_color(into_a_file));
        assert!(!args(Progress::Auto, ColorChoice::Never).log_color(TTY));
    }

    #[test]
    fn forced_modes() {
        assert_eq!(
            args(Progress::Live, ColorChoice::Auto).resolve(false, 0, PIPE),
            Ok(Display::Live { color: false })
        );
        assert_eq!(
            args(Progress::Plain, ColorChoice::Auto).resolve(false, 0, TTY),
            Ok(Display::Plain { color: true })
        );
        assert_eq!(
            args(Progress::Live, ColorChoice::Auto).resolve(true, 0, TTY),
            Err(LiveJsonConflict)
        );
        assert_eq!(
            args(Progress::Plain, ColorChoice::Auto).resolve(true, 0, TTY),
            Ok(Display::Json)
        );
    }
}
