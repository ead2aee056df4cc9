//! Colors, or none: every colored word of the human renderers goes through
//! a `Paint`, so `--color never` (or `NO_COLOR`) leaves no SGR sequence in
//! the output at all.

use console::Style;

use crate::events::Outcome;

/// Applies styles when enabled; returns the text unchanged otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paint {
    on: bool,
}

impl Paint {
    pub const fn new(on: bool) -> Paint {
        Paint { on }
    }

    pub fn is_on(self) -> bool {
        self.on
    }

    fn apply(self, style: Style, text: &str) -> String {
        if self.on && !text.is_empty() {
            style.force_styling(true).apply_to(text).to_string()
        } else {
            text.to_string()
        }
    }

    pub fn bold(self, text: &str) -> String {
        self.apply(Style::new().bold(), text)
    }

    pub fn dim(self, text: &str) -> String {
        self.apply(Style::new().dim(), text)
    }

    pub fn cyan(self, text: &str) -> String {
        self.apply(Style::new().cyan(), text)
    }

    pub fn yellow(self, text: &str) -> String {
        self.apply(Style::new().yellow(), text)
    }

    pub fn green(self, text: &str) -> String {
        self.apply(Style::new().green(), text)
    }

    pub fn red(self, text: &str) -> String {
        self.apply(Style::new().red().bold(), text)
    }

    /// `text` in the color of `outcome`: green for success, red for a
    /// failure, yellow for a rollback, magenta for an unknown state.
    pub fn outcome(self, outcome: Outcome, text: &str) -> String {
        let style = match outcome {
            Outcome::Deployed | Outcome::UpToDate => Style::new().green(),
            Outcome::Failed | Outcome::DeployedThenFailed => Style::new().red().bold(),
            Outcome::RolledBack | Outcome::Unconfirmed | Outcome::Superseded => {
                Style::new().yellow().bold()
            }
            Outcome::Unknown => Style::new().magenta().bold(),
            Outcome::Cancelled | Outcome::Skipped | Outcome::Unchecked => Style::new().dim(),
        };
        self.apply(style, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_is_the_text_itself_and_on_wraps_it_in_sgr() {
        let off = Paint::new(false);
        assert_eq!(off.red("FAILED"), "FAILED");
        assert_eq!(off.outcome(Outcome::Deployed, "deployed"), "deployed");
        let on = Paint::new(true);
        let red = on.red("FAILED");
        assert!(red.starts_with("\x1b[") && red.ends_with("\x1b[0m"), "{red:?}");
        assert!(red.contains("FAILED"));
        assert_eq!(on.green(""), "", "nothing to color: no escape either");
    }
}
