//! The flags of where systems are built and how they reach the hosts:
//! `--build-host`, `--push-to`, `--sign-key`, `--systems`; checked as
//! lib/'s `buildHost` and `pushTo` are, and applied over the hosts'
//! settings.

use std::path::PathBuf;

use crate::fleet::BuildOn;
use crate::rules;
use crate::select::Target;

const HEADING: &str = "Where systems are built";

#[derive(Debug, Clone, Default, clap::Args)]
pub struct BuildArgs {
    /// Build every selected host's system on this build host (evaluated
    /// and built there once per configuration): a host of deployFlake, or
    /// [user@]host[:port]. The same as buildOn = "host" with this buildHost.
    #[arg(long, value_name = "DEST", help_heading = HEADING)]
    pub build_host: Option<String>,

    /// Push each system's closure once to this Nix store (s3://...,
    /// ssh-ng://..., file://...) and let the hosts substitute it from
    /// there: it must be one of their substituters. Replaces pushTo.
    #[arg(long, value_name = "STORE_URI", help_heading = HEADING)]
    pub push_to: Option<String>,

    /// Sign what is pushed to a cache with this secret key file (`nix key
    /// generate-secret`); the signatures are made here, the key never
    /// leaves this machine.
    #[arg(long, value_name = "FILE", help_heading = HEADING)]
    pub sign_key: Option<PathBuf>,

    /// Deploy the systems FILE lists, built elsewhere (a JSON object: host
    /// or configuration name -> toplevel store path): nothing is evaluated
    /// or built. Each comes from this machine's store when it has it, else
    /// from the host's substituters.
    #[arg(long, value_name = "FILE", help_heading = HEADING)]
    pub systems: Option<PathBuf>,
}

/// The validated flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildOptions {
    pub build_host: Option<String>,
    pub push_to: Option<String>,
    pub sign_key: Option<PathBuf>,
    pub systems: Option<PathBuf>,
}

impl BuildArgs {
    /// Checks the values as lib/ checks the options they stand for.
    pub fn into_options(self) -> Result<BuildOptions, String> {
        for (flag, option, value) in [
            ("--build-host", "buildHost", &self.build_host),
            ("--push-to", "pushTo", &self.push_to),
        ] {
            if let Some(v) = value {
                if let Some(problem) = rules::string_problem(option, v) {
                    return Err(format!("{flag} `{v}` {problem}"));
                }
            }
        }
        Ok(BuildOptions {
            build_host: self.build_host,
            push_to: self.push_to,
            sign_key: self.sign_key,
            systems: self.systems,
        })
    }
}

impl BuildOptions {
    /// `--build-host` and `--push-to` over every selected host's settings.
    pub fn apply(&self, targets: &mut [Target]) {
        for t in targets {
            if let Some(h) = &self.build_host {
                t.spec.build_on = BuildOn::Host;
                t.spec.build_host = Some(h.clone());
            }
            if let Some(uri) = &self.push_to {
                t.spec.push_to = Some(uri.clone());
            }
        }
    }
}
