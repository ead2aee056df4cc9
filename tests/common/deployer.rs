//! The deploying machine a test runs the tool on: this machine, or a
//! container of another suite's root file system that shares the lab's
//! network (`lab.sh deployer`), with that suite's Nix and OpenSSH. The same
//! deploy-flake binary runs on both; the lab's directory (key, known_hosts,
//! fixture flakes) is at the same path in the container.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use super::lab::Suite;
use super::{lab_script, BIN, NIX_CONFIG};

/// Where the tool runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deployer {
    /// This machine (Debian 12: Nix 2.8, OpenSSH 9.2).
    Here,
    /// A container of `Suite`'s root file system; root uses its own store.
    On(Suite),
}

impl Deployer {
    /// `timeout … deploy-flake ARGS...` on this deploying machine, with
    /// NIX_CONFIG (the lab's settings) and `env` set; `lab_dir` is bound
    /// into a container.
    pub fn tool<S: AsRef<std::ffi::OsStr>>(
        self,
        lab_dir: &Path,
        args: &[S],
        env: &[(&str, String)],
    ) -> Command {
        let mut env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        if !env.iter().any(|(k, _)| k == "NIX_CONFIG") {
            env.push(("NIX_CONFIG".into(), NIX_CONFIG.into()));
        }
        let mut argv: Vec<OsString> = ["--kill-after=10", "600", BIN].map(OsString::from).into();
        argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        let mut c = Command::new("timeout");
        match self {
            Deployer::Here => {
                c.args(argv).envs(env);
            }
            Deployer::On(suite) => {
                c.args(["--kill-after=10", "660"]).arg(lab_script());
                c.arg("deployer").arg(suite.as_str()).arg(lab_dir).args(["-b", BIN]);
                for (k, v) in env {
                    c.arg("-e").arg(format!("{k}={v}"));
                }
                c.arg("--").arg("timeout").args(argv);
            }
        }
        c
    }

    /// What `nix --version` says there.
    pub fn nix_version(self, lab_dir: &Path) -> String {
        let mut c = match self {
            Deployer::Here => Command::new("nix"),
            Deployer::On(suite) => {
                let mut c = Command::new(lab_script());
                c.arg("deployer").arg(suite.as_str()).arg(lab_dir).args(["--", "nix"]);
                c
            }
        };
        super::run_ok(c.arg("--version"))
    }
}
