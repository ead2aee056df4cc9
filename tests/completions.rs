//! The shell completions and the manual page, as the shells and man(1)
//! take them: `deploy-flake completions bash` parses with `bash -n`, the
//! zsh and fish scripts name the subcommands and flags, and `deploy-flake
//! man` renders with `man -l -` (man-db; tests/prepare.sh installs it).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{describe_failure, run_tool};

/// `deploy-flake ARGS...`, which must succeed; its stdout.
fn generated(args: &[&str]) -> String {
    let (code, stdout, stderr) = run_tool(args);
    assert_eq!(code, 0, "deploy-flake {args:?}: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    stdout
}

/// `program ARGS...` with `input` on its stdin; its stdout (it must succeed).
fn feed(program: &str, args: &[&str], input: &str) -> String {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("MANWIDTH", "100")
        .env_remove("MANPAGER")
        .env_remove("PAGER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", describe_failure(&cmd, &out));
    String::from_utf8(out.stdout).unwrap()
}

const SUBCOMMANDS: [&str; 3] = ["rollback", "completions", "man"];
const FLAGS: [&str; 8] =
    ["flake", "max-parallel", "exclude", "dry-run", "json", "timeout", "progress", "color"];

#[test]
fn bash_completion_parses_and_names_the_subcommands_and_flags() {
    let script = generated(&["completions", "bash"]);
    feed("bash", &["-n"], &script);
    // Loaded into a shell, it registers itself for deploy-flake.
    let registered = feed("bash", &["-c", "source /dev/stdin; complete -p deploy-flake"], &script);
    assert!(
        registered.starts_with("complete ")
            && registered.trim_end().ends_with(" -F _deploy__flake deploy-flake"),
        "{registered}"
    );
    for word in SUBCOMMANDS {
        assert!(script.contains(word), "no {word}");
    }
    for flag in FLAGS {
        assert!(script.contains(&format!("--{flag}")), "no --{flag}");
    }
    assert!(script.contains("auto live plain"), "the values of --progress");
}

#[test]
fn zsh_and_fish_completions_name_the_subcommands_and_flags() {
    let zsh = generated(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef deploy-flake"), "{}", &zsh[..80]);
    let fish = generated(&["completions", "fish"]);
    for word in SUBCOMMANDS {
        assert!(zsh.contains(&format!("'{word}:")), "zsh: no {word}");
        assert!(fish.contains(&format!("-a \"{word}\"")), "fish: no {word}");
    }
    for flag in FLAGS {
        // zsh: '--flag=[help]' or, repeatable, '*--flag=[help]'.
        assert!(zsh.contains(&format!("--{flag}")), "zsh: no --{flag}");
        assert!(fish.contains(&format!("-l {flag}")), "fish: no --{flag}");
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let (code, stdout, stderr) = run_tool(&["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(stderr.contains("invalid value 'tcsh'"), "{stderr}");
}

#[test]
fn the_manual_page_renders_with_its_options() {
    let roff = generated(&["man"]);
    let page = feed("man", &["-l", "-"], &roff);
    let words = page.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "deploy-flake(1)",
        "NAME deploy-flake - Deploy the NixOS configurations of a Nix flake",
        "SYNOPSIS",
        "--max-parallel <N> [default: 16]",
        "--progress <WHEN> [default: auto]",
        "--color <WHEN> [default: auto]",
        "--timeout <PHASE=SECONDS>",
        "SUBCOMMANDS",
        "deploy-flake-rollback(1)",
        "Exit status: 0 all hosts succeeded",
    ] {
        assert!(words.contains(needle), "no {needle:?} in:\n{page}");
    }

    let roff = generated(&["man", "rollback"]);
    let page = feed("man", &["-l", "-"], &roff);
    let words = page.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in ["deploy-flake-rollback(1)", "--to-generation <N>", "--color <WHEN>"] {
        assert!(words.contains(needle), "no {needle:?} in:\n{page}");
    }
}
