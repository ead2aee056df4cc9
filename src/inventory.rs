//! The fleet inventory: `nix eval --json <flake>#deployFlake` parsed into
//! typed, validated records (schema version 1, see DESIGN.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The schema version this build understands.
pub const SCHEMA_VERSION: u32 = 1;

/// The whole `deployFlake` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inventory {
    pub schema_version: u32,
    pub hosts: BTreeMap<String, HostSpec>,
}

/// One host, fully resolved by `lib/` (defaults merged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostSpec {
    pub hostname: String,
    pub ssh_user: String,
    pub ssh_port: u16,
    pub ssh_opts: Vec<String>,
    /// Attribute of `nixosConfigurations`.
    pub configuration: String,
    pub tags: Vec<String>,
    pub build_on: BuildOn,
    /// Path inside the toplevel; `None` = auto-detect `pre-activate-safety-checks`.
    pub self_check: Option<String>,
    /// Privilege escalation command used when `ssh_user` is not root.
    pub sudo: String,
    pub magic_rollback: bool,
    pub timeouts: Timeouts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildOn {
    Target,
    Local,
}

/// Per-phase timeouts in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    pub connect: u64,
    pub lock: u64,
    pub preflight: u64,
    pub copy: u64,
    pub build: u64,
    pub self_check: u64,
    pub activate: u64,
    pub confirm: u64,
    pub boot: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: 10,
            lock: 10,
            preflight: 60,
            copy: 600,
            build: 3600,
            self_check: 120,
            activate: 600,
            confirm: 30,
            boot: 300,
        }
    }
}

impl HostSpec {
    /// The record `lib/` would produce for a host declared with no options.
    pub fn with_defaults(attr: &str) -> HostSpec {
        HostSpec {
            hostname: attr.to_string(),
            ssh_user: "root".into(),
            ssh_port: 22,
            ssh_opts: Vec::new(),
            configuration: attr.to_string(),
            tags: Vec::new(),
            build_on: BuildOn::Target,
            self_check: None,
            sudo: "sudo".into(),
            magic_rollback: true,
            timeouts: Timeouts::default(),
        }
    }
}
