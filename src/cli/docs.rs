//! `deploy-flake completions SHELL` and `deploy-flake man`: a shell's
//! completion script and the manual pages, generated from the same clap
//! definition as the parser, so they never disagree with it.

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DocsCommand {
    /// Print a shell's completion script
    ///
    /// For example `deploy-flake completions bash >
    /// /etc/bash_completion.d/deploy-flake`.
    Completions {
        #[arg(value_enum, value_name = "SHELL")]
        shell: Shell,
    },
    /// Print the manual page (roff)
    ///
    /// For example `deploy-flake man | man -l -`. With a subcommand, that
    /// subcommand's page (deploy-flake-rollback).
    Man {
        #[arg(value_name = "SUBCOMMAND", value_parser = subcommand_names())]
        subcommand: Option<String>,
    },
}

/// The subcommands that have a page of their own.
fn subcommand_names() -> Vec<&'static str> {
    vec!["rollback", "status", "diff", "keys"]
}

impl DocsCommand {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            DocsCommand::Completions { .. } => "completions",
            DocsCommand::Man { .. } => "man",
        }
    }

    /// What it prints.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            DocsCommand::Completions { shell } => completions(*shell, &mut out),
            DocsCommand::Man { subcommand } => man_page(subcommand.as_deref(), &mut out),
        }
        out
    }
}

/// The completion script of `shell`.
fn completions(shell: Shell, out: &mut Vec<u8>) {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// deploy-flake(1), or deploy-flake-SUBCOMMAND(1).
fn man_page(subcommand: Option<&str>, out: &mut Vec<u8>) {
    let mut cmd = Cli::command();
    // Builds the tree: global flags reach the subcommands, which are named
    // after their parent (deploy-flake-rollback).
    cmd.build();
    let page = match subcommand.and_then(|s| cmd.find_subcommand(s)) {
        Some(sub) => sub.clone(),
        None => cmd,
    };
    clap_mangen::Man::new(page).render(out).expect("writing to memory succeeds");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(d: DocsCommand) -> String {
        String::from_utf8(d.render()).unwrap()
    }

    #[test]
    fn completions_name_the_subcommands_and_flags() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let script = text(DocsCommand::Completions { shell });
            // fish names a long flag without its dashes (`-l max-parallel`).
            for word in ["rollback", "completions", "max-parallel", "progress", "color"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn man_pages_of_the_tool_and_of_rollback() {
        let page = text(DocsCommand::Man { subcommand: None });
        assert!(page.contains(".TH deploy-flake 1"), "{page}");
        for word in ["max\\-parallel", "progress", "Exit status:", "rollback"] {
            assert!(page.contains(word), "no {word}:\n{page}");
        }
        let page = text(DocsCommand::Man { subcommand: Some("rollback".into()) });
        assert!(page.contains("deploy\\-flake\\-rollback"), "{page}");
        assert!(page.contains("to\\-generation"), "{page}");
        assert!(page.contains("color"), "global flags reach the subcommand:\n{page}");
    }
}
