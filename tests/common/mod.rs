//! Support for the integration tests, shared by every test crate through
//! `mod common;` (from `tests/deploy/main.rs`:
//! `#[path = "../common/mod.rs"] mod common;`):
//!
//! - here: the repository root, running a command and describing how it
//!   failed, and running the built `deploy-flake` binary;
//! - `nix`: the host's `nix` (`run_nix`, `eval_expr`, `eval_flake`) and Nix
//!   string literals;
//! - `flake`: temp flakes with the repository's `lib/` copied in
//!   (`copy_lib` is the one place that copies it);
//! - `fixture`, `lab`, `target`, `claim`: the lab, below;
//! - `deployer`: where the tool runs, this machine or a container of
//!   another suite (its Nix and OpenSSH) on the lab's network.
//!
//! The lab from Rust: real targets (systemd as PID 1, a Nix daemon with its
//! own store, sshd on a real interface) booted by `tests/lab/lab.sh`, and
//! fixture flakes of NixOS stand-in configurations for them.
//!
//! ```ignore
//! mod common;
//! use common::{Lab, Suite};
//!
//! let lab = Lab::boot(2, Suite::Trixie);
//! let web1 = &lab.targets[0];
//! let flake = lab.fixture_flake(&[("web1", web1, "healthy-v2")]);
//! // ... run deploy-flake against `flake` ...
//! assert_eq!(web1.ssh_ok("cat /run/demo-web/version"), "healthy-v2");
//! // dropping `lab` stops every target, also when the test panicked
//! ```
//!
//! The lab needs root, systemd-nspawn, mmdebstrap, nix and ssh. A missing
//! prerequisite fails the test with what to install: the lab tier is never
//! skipped silently.
//!
//! Only the functions of `nix.rs`, `scenario_names` and the lab run `nix`:
//! the unit-tier tests that include this module run without it.
#![allow(dead_code)]

mod claim;
mod deployer;
mod fixture;
mod flake;
mod lab;
mod nix;
mod target;

// Each test crate uses a part of these.
#[allow(unused_imports)]
pub use deployer::Deployer;
#[allow(unused_imports)]
pub use fixture::scenario_names;
#[allow(unused_imports)]
pub use flake::{copy_lib, copy_tree, fixture_flake, flake_from, path_ref, project_flake};
#[allow(unused_imports)]
pub use lab::{Lab, Suite};
#[allow(unused_imports)]
pub use nix::{
    error_line, eval_expr, eval_flake, host_nix, nix_ok, nix_path, nix_string, run_nix, NIX_CONFIG,
};
#[allow(unused_imports)]
pub use target::Target;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/lab/lab.sh`.
pub fn lab_script() -> PathBuf {
    repo_root().join("tests/lab/lab.sh")
}

/// The built `deploy-flake` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_deploy-flake");

/// `deploy-flake ARGS...`: (exit code, stdout, stderr).
pub fn run_tool(args: &[&str]) -> (i32, String, String) {
    let out = run(Command::new(BIN).args(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd`, panicking with its argv, exit status and output unless it
/// succeeded; returns its stdout, trimmed.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    if !out.status.success() {
        panic!("{}", describe_failure(cmd, &out));
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs `cmd` and returns its output, panicking only when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd))
}

/// "`argv` exited with N" plus the tails of stdout and stderr.
pub fn describe_failure(cmd: &Command, out: &Output) -> String {
    format!(
        "{:?} failed ({})\n--- stdout (tail)\n{}\n--- stderr (tail)\n{}",
        cmd,
        out.status,
        tail(&String::from_utf8_lossy(&out.stdout), 40),
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    )
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Fails loudly (never skips) when the machine cannot run the lab.
pub fn require_lab_prerequisites() {
    let uid = Command::new("id").arg("-u").output().ok();
    let is_root = uid.map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
    assert!(
        is_root,
        "the lab tier needs root (overlay mounts, network namespaces, systemd-nspawn); run the tests as root"
    );
    let mut missing = Vec::new();
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("mmdebstrap", "mmdebstrap"),
        ("nix", "nix-bin"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("ip", "iproute2"),
        ("flock", "util-linux"),
    ] {
        if !on_path(tool) && !missing.contains(&package) {
            missing.push(package);
        }
    }
    assert!(
        missing.is_empty(),
        "the lab tier is missing tools: apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    assert!(
        Path::new("/sys/fs/cgroup/systemd").is_dir() && Path::new("/sys/fs/cgroup/unified").is_dir(),
        "the lab expects the hybrid cgroup layout (/sys/fs/cgroup/systemd and /sys/fs/cgroup/unified)"
    );
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}
