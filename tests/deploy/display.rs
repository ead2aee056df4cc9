//! What a person sees: the live display under a real pseudo-terminal
//! (util-linux `script`, 120x40), read back through a terminal emulator
//! (vt100), and the plain lines when stdout is a pipe.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use regex::Regex;

use crate::common::{Lab, Suite, BIN, NIX_CONFIG};
use crate::helpers::*;

const COLS: u16 = 120;
const ROWS: u16 = 40;

/// One run of the tool under a pseudo-terminal.
struct PtyRun {
    code: i32,
    /// Everything the terminal received.
    bytes: Vec<u8>,
}

impl PtyRun {
    /// The transcript as a person sees it, scrollback included: the bytes
    /// played on an emulator as wide as the pty and tall enough that
    /// nothing scrolls away (the tool only moves its cursor relatively).
    fn transcript(&self) -> String {
        let mut p = vt100::Parser::new(2000, COLS, 0);
        p.process(&self.bytes);
        screen_lines(&p).join("\n")
    }

    /// The screen at every redraw (just before the cursor moves up to
    /// redraw the live area), as lines.
    fn frames(&self) -> Vec<Vec<String>> {
        let up = Regex::new(r"\x1b\[[0-9]+A").unwrap();
        let text = String::from_utf8_lossy(&self.bytes).into_owned();
        let mut p = vt100::Parser::new(2000, COLS, 0);
        let mut done = 0;
        let mut frames = Vec::new();
        for m in up.find_iter(&text) {
            p.process(&text.as_bytes()[done..m.start()]);
            done = m.start();
            frames.push(screen_lines(&p));
        }
        frames
    }

    /// SGR (color) sequences: `ESC [ ... m`.
    fn sgr_count(&self) -> usize {
        Regex::new(r"\x1b\[[0-9;]*m")
            .unwrap()
            .find_iter(&String::from_utf8_lossy(&self.bytes))
            .count()
    }
}

/// The emulator's rows, one line each (a full row is not joined with the
/// next one), without trailing blanks and blank rows at the end.
fn screen_lines(p: &vt100::Parser) -> Vec<String> {
    let mut rows: Vec<String> =
        p.screen().rows(0, COLS).map(|r| r.trim_end().to_string()).collect();
    while rows.last().is_some_and(|r| r.is_empty()) {
        rows.pop();
    }
    rows
}

impl std::fmt::Display for PtyRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- screen\n{}", self.code, self.transcript())
    }
}

/// `deploy-flake --flake FLAKE ARGS...` under `script` on a 120x40 pty,
/// with `env` set (and TERM, NIX_CONFIG).
fn under_pty(flake: &Path, args: &[&str], env: &[(&str, &str)]) -> PtyRun {
    let mut argv = vec![BIN.to_string(), "--flake".into(), flake.display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let quoted: Vec<String> =
        argv.iter().map(|a| shell_escape::escape(a.as_str().into()).into_owned()).collect();
    let inner = format!("stty cols {COLS} rows {ROWS}; exec {}", quoted.join(" "));
    let mut c = Command::new("timeout");
    c.args(["--kill-after=10", "600", "script", "-qfec", &inner, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env("NIX_CONFIG", NIX_CONFIG)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run script(1) (util-linux)");
    PtyRun { code: out.status.code().unwrap_or(-1), bytes: out.stdout }
}

/// `(host, phase)` of every live host line in `frames`.
fn live_lines(frames: &[Vec<String>]) -> BTreeSet<(String, String)> {
    let line = Regex::new(
        r"^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] ([^ ]+) +(connect|lock|preflight|copy|build|self-check|activate|confirm|boot) +[0-9]+(s|m[0-9]{2}s)( |$)",
    )
    .unwrap();
    frames
        .iter()
        .flatten()
        .filter_map(|l| line.captures(l).map(|c| (c[1].to_string(), c[2].to_string())))
        .collect()
}

fn v1_baseline(lab: &Lab, hosts: &[&str]) {
    let run = deploy(&flake(lab, &entries(lab, hosts, "healthy-v1")), &["--all"]);
    assert_eq!(run.code, 0, "baseline: {run}");
}

/// One host entry per name, on the lab's targets in turn, all with
/// `configuration`.
fn entries(lab: &Lab, hosts: &[&str], configuration: &str) -> Vec<String> {
    hosts.iter().zip(&lab.targets).map(|(h, t)| host_entry(lab, h, t, configuration, "")).collect()
}

/// Three hosts under a terminal, two deployed and one rolled back, with
/// NO_COLOR set: a line per host at work with its phase and time, the
/// results above, the failing host's last output lines, the final counts
/// and the summary table; not one color sequence.
#[test]
fn live_display_on_a_terminal() {
    let lab = Lab::boot(3, Suite::Trixie);
    v1_baseline(&lab, &["h0", "h1", "h2"]);
    let f = flake(
        &lab,
        &[
            host_entry(&lab, "h0", &lab.targets[0], "healthy-v2", ""),
            host_entry(&lab, "h1", &lab.targets[1], "healthy-v2", ""),
            host_entry(&lab, "h2", &lab.targets[2], "failing-unit", ""),
        ],
    );
    let run = under_pty(&f, &["--all"], &[("NO_COLOR", "1")]);
    assert_eq!(run.code, 1, "{run}");

    let frames = run.frames();
    let seen = live_lines(&frames);
    let hosts: BTreeSet<&str> = seen.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(hosts, BTreeSet::from(["h0", "h1", "h2"]), "live lines: {seen:?}\n{run}");
    let phases: BTreeSet<&str> = seen.iter().map(|(_, p)| p.as_str()).collect();
    assert!(phases.len() >= 2, "phases seen live: {phases:?}");
    let header = Regex::new(r"^3 host\(s\): [0-9] queued, [1-3] running, ").unwrap();
    assert!(frames.iter().flatten().any(|l| header.is_match(l)), "no live header:\n{run}");
    assert!(
        frames.iter().all(|f| f
            .iter()
            .filter(|l| l.starts_with(['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏']))
            .count()
            <= 3),
        "a host line per host at work, no more"
    );

    let screen = run.transcript();
    let result = |pattern: &str| Regex::new(&format!("(?m){pattern}")).unwrap().is_match(&screen);
    assert!(result(r"^deploy-flake: run [^ ]+: 3 host\(s\): h0, h1, h2$"), "{run}");
    assert!(result(r"^✔ h0 deployed \([0-9.]+s\)$"), "{run}");
    assert!(result(r"^✔ h1 deployed \([0-9.]+s\)$"), "{run}");
    assert!(result(r"^↺ h2 ROLLED BACK in (activate|confirm) \([0-9.]+s\): "), "{run}");
    assert!(result(r"^  h2: last [0-9]+ of [0-9]+ output line\(s\):$"), "{run}");
    assert!(result(r"^  │ .*demo-broken"), "the failing host's output:\n{run}");
    assert!(
        result(
            r"^3 host\(s\): 0 queued, 0 running, 2 deployed, 0 up to date, 0 failed, 1 rolled back \([0-9]+s\)$"
        ),
        "final counts:\n{run}"
    );
    assert!(result(r"^HOST +RESULT +PHASE +TIME +SYSTEM$"), "{run}");
    assert!(result(r"^h2 +rolled back +(activate|confirm) "), "{run}");
    assert!(result(r"^2 of 3 host\(s\) succeeded in [0-9.]+s; exit code 1$"), "{run}");
    assert!(!result(r"^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] "), "the live area is gone at the end:\n{run}");

    assert_eq!(run.sgr_count(), 0, "NO_COLOR=1: no color sequence:\n{run}");
    assert_eq!(lab.targets[0].ssh_ok("cat /run/demo-web/version"), "healthy-v2");
}

/// `--color always` colors the live display even with NO_COLOR set.
#[test]
fn color_always_on_a_terminal() {
    let lab = Lab::boot(2, Suite::Trixie);
    v1_baseline(&lab, &["h0", "h1"]);
    let entries = entries(&lab, &["h0", "h1"], "healthy-v2");
    let run =
        under_pty(&flake(&lab, &entries), &["--all", "--color", "always"], &[("NO_COLOR", "1")]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.sgr_count() > 0, "no color sequence:\n{run}");
    let green_deployed = Regex::new(r"\x1b\[32m✔\x1b\[0m").unwrap();
    assert!(green_deployed.is_match(&String::from_utf8_lossy(&run.bytes)), "a green mark:\n{run}");
    let screen = run.transcript();
    assert!(screen.contains("2 host(s): 0 queued, 0 running, 2 deployed"), "{run}");
    assert!(live_lines(&run.frames()).len() >= 2, "{run}");
}

/// stdout a pipe (TERM set all the same): the plain host-tagged lines,
/// every host's phases in pipeline order, the summary; no escape at all.
#[test]
fn off_a_terminal_the_output_is_plain_lines() {
    let lab = Lab::boot(2, Suite::Trixie);
    v1_baseline(&lab, &["h0", "h1"]);
    let entries = entries(&lab, &["h0", "h1"], "healthy-v2");
    let f = flake(&lab, &entries);
    let out = Command::new("timeout")
        .args(["--kill-after=10", "600", BIN, "--flake"])
        .arg(&f)
        .arg("--all")
        .env("TERM", "xterm-256color")
        .env("NIX_CONFIG", NIX_CONFIG)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains('\x1b'), "an escape sequence:\n{stdout:?}");

    let (body, summary) = stdout.split_once("\n\nHOST ").expect("a summary table");
    let mut lines = body.lines();
    let first = Regex::new(r"^deploy-flake: run [^ ]+: 2 host\(s\): h0, h1$").unwrap();
    assert!(first.is_match(lines.next().unwrap()), "{stdout}");
    let tagged = Regex::new(r"^\[(h0|h1)\] (.+)$").unwrap();
    let word = Regex::new("^[a-z-]+$").unwrap();
    let mut phases: [Vec<String>; 2] = Default::default();
    for l in lines {
        let c = tagged.captures(l).unwrap_or_else(|| panic!("not a plain line: {l:?}\n{stdout}"));
        let rest = &c[2];
        if word.is_match(rest) {
            phases[usize::from(&c[1] == "h1")].push(rest.to_string());
        }
    }
    let all = [
        "connect",
        "lock",
        "preflight",
        "copy",
        "build",
        "self-check",
        "activate",
        "confirm",
        "boot",
    ];
    for (h, p) in phases.iter().enumerate() {
        assert_eq!(p, &all, "h{h}'s phases:\n{stdout}");
    }
    assert!(
        summary.starts_with(" RESULT    PHASE  TIME  SYSTEM\nh0    deployed  boot "),
        "{summary}"
    );
    let last = Regex::new(r"\n\n2 of 2 host\(s\) succeeded in [0-9.]+s; exit code 0\n$").unwrap();
    assert!(last.is_match(summary), "{summary}");
}

/// A target's terminal escapes (a window title, a cleared screen, the
/// clipboard) in its output and in its failure message reach the live
/// display escaped: the terminal gets none of them raw.
#[test]
fn the_live_display_shows_a_targets_escapes_escaped() {
    let lab = Lab::boot(2, Suite::Trixie);
    let f = flake(
        &lab,
        &[
            host_entry(&lab, "out", &lab.targets[0], "prints-escapes", ""),
            host_entry(&lab, "fails", &lab.targets[1], "escapes-in-failure", ""),
        ],
    );
    let run = under_pty(&f, &["--all"], &[]);
    assert_eq!(run.code, 1, "{run}");
    let raw = String::from_utf8_lossy(&run.bytes);
    for seq in ["\u{1b}]", "\u{7}", "\u{1b}[2J", "\u{1b}[H"] {
        assert!(!raw.contains(seq), "{seq:?} reached the terminal: {raw:?}");
    }
    let screen = run.transcript();
    assert!(screen.contains(r"refusing \x1b]0;pwned\x07 \x1b[2J here"), "{screen}");
}
