//! The host's `nix`: one way to call it (flakes on, no binary cache asked),
//! its answers as Ok(stdout) or Err(stderr), and Nix literals for the
//! expressions the tests write.

use std::path::Path;
use std::process::{Command, Output};

use super::run;

/// `s` as a Nix string literal.
pub use deploy_flake::plan::nix_string;

/// The deploying machine's Nix settings for runs of the tool: nothing
/// outside is reachable (no binary cache to ask), and Debian's single-user
/// Nix has no build users for local builds; the fixtures build with the
/// host's /bin/sh and coreutils, outside a sandbox.
pub const NIX_CONFIG: &str = "substituters =\nbuild-users-group =\nsandbox = false";

/// The host's `nix` with the experimental features the tests need (the
/// host may run Nix 2.8, where they are off by default) and no substituter:
/// none is reachable here, and asking one only adds timeouts.
pub fn host_nix() -> Command {
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command flakes"]);
    cmd.args(["--option", "substituters", ""]);
    cmd
}

/// `nix ARGS...`: Ok(stdout) or Err(stderr).
pub fn run_nix(args: &[&str]) -> Result<String, String> {
    let out = run(host_nix().args(args));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `nix ARGS...`, which must succeed: its stdout, as printed.
pub fn nix_ok(args: &[&str]) -> String {
    run_nix(args).unwrap_or_else(|stderr| panic!("nix {} failed:\n{stderr}", args.join(" ")))
}

/// `nix eval --json --impure --expr EXPR`: Ok(value) or Err(stderr).
pub fn eval_expr(expr: &str) -> Result<serde_json::Value, String> {
    json_or_stderr(run(host_nix().args(["eval", "--json", "--impure", "--expr", expr])))
}

/// `nix eval --json <dir>#deployFlake`: Ok(value) or Err(stderr).
pub fn eval_flake(dir: &Path) -> Result<serde_json::Value, String> {
    json_or_stderr(run(host_nix()
        .args(["eval", "--json"])
        .arg(format!("{}#deployFlake", dir.display()))))
}

/// The JSON nix printed, or its stderr when it failed.
fn json_or_stderr(out: Output) -> Result<serde_json::Value, String> {
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("nix printed JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The first `error:` line Nix printed.
pub fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
}

/// `p` as a Nix string literal (a path with spaces stays one token).
pub fn nix_path(p: &Path) -> String {
    nix_string(p.to_str().expect("utf-8 path"))
}
