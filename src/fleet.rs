//! The fleet's types: a host's record as lib/ resolves it (`HostSpec`), its
//! timeouts, health checks and keys, how to log in to it (`SshLogin`), and the rollout's settings. Data only: `rules` checks them and
//! gives their defaults (lib/rules.json), `inventory` reads them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::events::Phase;

/// The schema version this build understands.
pub const SCHEMA_VERSION: u32 = 1;

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
    /// `buildOn = "local"`: the target fetches what it can from its own
    /// substituters (binary caches) instead of receiving it from here. A
    /// record from a lib/ without the option reads as `true`.
    #[serde(default = "yes")]
    pub substitute_on_target: bool,
    /// User-declared checks run after activation, before the confirmation.
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    /// Secrets written to files on the host at deploy time, by attribute
    /// name (never through the Nix store). A record from a lib/ without
    /// them reads as none.
    #[serde(default)]
    pub keys: BTreeMap<String, KeySpec>,
    pub timeouts: Timeouts,
    /// `buildOn = "host"`: where to build (a host of the fleet, or
    /// `[user@]host[:port]`). The options of where a system is built and
    /// how it reaches the host (`crate::build`) default when a record from
    /// an older lib/ lacks them.
    #[serde(default)]
    pub build_host: Option<String>,
    /// ssh options for a build host given as a destination.
    #[serde(default)]
    pub build_host_ssh_opts: Vec<String>,
    /// Systems the build host builds at once (0: its core count).
    #[serde(default)]
    pub build_host_capacity: u32,
    /// With a build host: the closure comes to the host from the deploying
    /// machine (relayed) or straight from the build host.
    #[serde(default)]
    pub copy_from: CopyFrom,
    /// A store the closure is pushed to once; the host substitutes from it.
    #[serde(default)]
    pub push_to: Option<String>,
    /// A system built elsewhere: deployed as it is, nothing evaluated or built.
    #[serde(default)]
    pub system: Option<String>,
}

/// What an ssh destination is made of: how to log in to a host and become
/// root there. A host's own comes from its record ([`HostSpec::login`]); a
/// build host given as `[user@]host[:port]` has one of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshLogin {
    pub hostname: String,
    pub user: String,
    pub port: u16,
    pub ssh_opts: Vec<String>,
    /// Privilege escalation command, used when `user` is not root.
    pub sudo: String,
    /// Seconds a connection may take.
    pub connect_timeout: u64,
}

impl HostSpec {
    /// How to log in to the host.
    pub fn login(&self) -> SshLogin {
        SshLogin {
            hostname: self.hostname.clone(),
            user: self.ssh_user.clone(),
            port: self.ssh_port,
            ssh_opts: self.ssh_opts.clone(),
            sudo: self.sudo.clone(),
            connect_timeout: self.timeouts.connect,
        }
    }
}

/// Where a closure built on a build host comes to the host from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyFrom {
    /// Relayed by the deploying machine.
    #[default]
    Deployer,
    /// Copied by the build host itself, with its own ssh identity.
    BuildHost,
}

impl CopyFrom {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyFrom::Deployer => "deployer",
            CopyFrom::BuildHost => "build-host",
        }
    }
}

/// A key (colmena's `deployment.keys`): a secret read on the deploying
/// machine at deploy time and written to `dest_dir/name` on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeySpec {
    /// The file's name in `dest_dir`.
    pub name: String,
    /// Exactly one of `text`, `key_file`, `key_command` is set.
    pub text: Option<crate::secret::Secret>,
    /// A file on the deploying machine.
    pub key_file: Option<String>,
    /// A command run on the deploying machine: its stdout is the key.
    pub key_command: Option<Vec<String>>,
    pub dest_dir: String,
    pub user: String,
    pub group: String,
    /// Octal, as chmod takes it.
    pub permissions: String,
    pub upload_at: UploadAt,
}

/// When a key is written: before `switch-to-configuration` runs, or once
/// the activation is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UploadAt {
    PreActivation,
    PostActivation,
}

impl UploadAt {
    pub fn as_str(self) -> &'static str {
        match self {
            UploadAt::PreActivation => "pre-activation",
            UploadAt::PostActivation => "post-activation",
        }
    }
}

impl KeySpec {
    /// Where it is written on the host.
    pub fn path(&self) -> String {
        format!("{}/{}", self.dest_dir, self.name)
    }
}

fn yes() -> bool {
    true
}

/// A health check, retried every `period` s until it passes or `timeout` s
/// pass. Its record is lib/'s (`command` or `http`, the other null): one
/// with both or neither does not read, and the rules name its fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "HealthCheckRecord", into = "HealthCheckRecord")]
pub struct HealthCheck {
    pub description: String,
    pub probe: Probe,
    pub period: u64,
    pub timeout: u64,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// This command on the target, as root: passes when it exits 0.
    Command(Vec<String>),
    /// An HTTP GET of this URL from the deploying machine: passes on 2xx, 3xx.
    Http(String),
}

/// A health check as lib/ writes it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HealthCheckRecord {
    description: String,
    command: Option<Vec<String>>,
    http: Option<String>,
    period: u64,
    timeout: u64,
}

impl TryFrom<HealthCheckRecord> for HealthCheck {
    type Error = &'static str;

    fn try_from(r: HealthCheckRecord) -> Result<HealthCheck, &'static str> {
        let probe = match (r.command, r.http) {
            (Some(argv), None) => Probe::Command(argv),
            (None, Some(url)) => Probe::Http(url),
            _ => return Err("a health check has exactly one of command and http"),
        };
        Ok(HealthCheck { description: r.description, probe, period: r.period, timeout: r.timeout })
    }
}

impl From<HealthCheck> for HealthCheckRecord {
    fn from(c: HealthCheck) -> HealthCheckRecord {
        let (command, http) = match c.probe {
            Probe::Command(argv) => (Some(argv), None),
            Probe::Http(url) => (None, Some(url)),
        };
        let (description, period, timeout) = (c.description, c.period, c.timeout);
        HealthCheckRecord { description, command, http, period, timeout }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildOn {
    Target,
    Local,
    /// On a build host (`buildHost`).
    Host,
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
    /// A record from a lib/ that had no `reboot` timeout still reads (with
    /// the default).
    #[serde(default = "Timeouts::default_reboot")]
    pub reboot: u64,
}

impl Timeouts {
    /// The timeout of a phase, in seconds.
    pub fn get(&self, phase: Phase) -> u64 {
        let mut copy = *self;
        *copy.get_mut(phase)
    }

    /// The timeout of a phase, to override it.
    pub fn get_mut(&mut self, phase: Phase) -> &mut u64 {
        let t = self;
        match phase {
            Phase::Connect => &mut t.connect,
            Phase::Lock => &mut t.lock,
            Phase::Preflight => &mut t.preflight,
            Phase::Copy => &mut t.copy,
            Phase::Build => &mut t.build,
            Phase::SelfCheck => &mut t.self_check,
            Phase::Activate => &mut t.activate,
            Phase::Confirm => &mut t.confirm,
            Phase::Boot => &mut t.boot,
            Phase::Reboot => &mut t.reboot,
        }
    }
}

impl BuildOn {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildOn::Target => "target",
            BuildOn::Local => "local",
            BuildOn::Host => "host",
        }
    }
}

/// A wave's size or a failure budget: a number of hosts, or a percentage
/// (written `"25%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Count(u64),
    Percent(#[serde(with = "percent")] u8),
}

mod percent {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &u8, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{p}%"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_percent(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Count(n) => write!(f, "{n}"),
            Size::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// `"25%"` -> 25; 0 to 100.
fn parse_percent(s: &str) -> Result<u8, String> {
    let digits = s.strip_suffix('%').ok_or_else(|| format!("`{s}` is not N%"))?;
    match digits.parse::<u32>() {
        Ok(p) if p <= 100 && !digits.starts_with('+') => Ok(p as u8),
        Ok(_) => Err(format!("`{s}`: a percentage over 100")),
        Err(_) => Err(format!("`{s}` is not N%")),
    }
}

impl Size {
    /// `3` or `25%`, as the command line writes it.
    pub fn parse(s: &str) -> Result<Size, String> {
        if s.ends_with('%') {
            return parse_percent(s).map(Size::Percent);
        }
        s.parse::<u64>().map(Size::Count).map_err(|_| format!("`{s}` is neither a count nor N%"))
    }

    /// How many of `n` hosts: a percentage rounds down.
    pub fn of(self, n: usize) -> usize {
        match self {
            Size::Count(c) => usize::try_from(c).unwrap_or(usize::MAX),
            Size::Percent(p) => n * usize::from(p) / 100,
        }
    }

    /// A wave size: counts from 1, percentages from 1%.
    pub fn problem_as_wave(self) -> Option<&'static str> {
        match self {
            Size::Count(0) => Some("a wave of no host"),
            Size::Percent(0) => Some("a wave of 0%"),
            _ => None,
        }
    }
}

/// `deployFlake.rollout`, as lib/ resolves it (every key present; checked
/// by `rules::check_rollout`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Names, `@tags` and globs: the hosts of the first wave.
    pub canary: Vec<String>,
    /// The sizes of the waves after the canaries; the last one repeats.
    pub batches: Vec<Size>,
    /// How many failed hosts the rollout tolerates before it stops
    /// starting waves.
    pub max_failures: Size,
    /// Seconds to wait after a wave before checking it again; `None`: no soak.
    pub soak: Option<u64>,
}
