//! The fleet inventory: `nix eval --json <flake>#deployFlake` parsed into
//! typed, validated records (schema version 1, see DESIGN.md).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::events::Phase;

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
    /// User-declared checks run after activation, before the confirmation.
    #[serde(default)]
    pub health_checks: Vec<HealthCheck>,
    pub timeouts: Timeouts,
}

/// A health check: a command on the target (as root) or an HTTP GET from the
/// deploying machine, retried every `period` s until it passes or `timeout` s pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    pub description: String,
    pub command: Option<Vec<String>>,
    pub http: Option<String>,
    pub period: u64,
    pub timeout: u64,
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
            health_checks: Vec::new(),
            timeouts: Timeouts::default(),
        }
    }
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
        }
    }
}

impl BuildOn {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildOn::Target => "target",
            BuildOn::Local => "local",
        }
    }
}

// ---------------------------------------------------------------------------
// Errors

/// The lines to add to a flake that has no `deployFlake` output.
pub const DEPLOY_FLAKE_SNIPPET: &str =
    "    deployFlake = deploy-flake.lib.mkDeployFlake {\n      inherit self;\n    };";

/// Why the inventory could not be read. Every message names the input at
/// fault and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(
        "could not run `nix` ({source}): install Nix 2.4 or later and make sure `nix` is on PATH"
    )]
    NixNotFound { source: std::io::Error },

    #[error("`nix eval {flake}#deployFlake` did not finish within {after:?}: check that the flake's inputs are reachable, or that evaluating deployFlake does not evaluate a NixOS configuration")]
    Timeout { flake: String, after: Duration },

    #[error("flake `{flake}` has no deployFlake output; add these lines to the outputs of its flake.nix (with deploy-flake as an input):\n\n{snippet}\n\nor name ad hoc destinations instead (nixos://[user@]host[:port][/config])", snippet = DEPLOY_FLAKE_SNIPPET)]
    NoDeployFlake { flake: String },

    #[error("evaluating `{flake}#deployFlake` failed:\n{stderr_tail}")]
    Eval { flake: String, stderr_tail: String },

    #[error("deployFlake is not valid JSON ({source}); it must be the output of deploy-flake's lib.mkDeployFlake")]
    Json { source: serde_json::Error },

    #[error("deployFlake has no schemaVersion; it must be the output of deploy-flake's lib.mkDeployFlake")]
    NoSchemaVersion,

    #[error("deployFlake has schemaVersion {found}, but this deploy-flake understands only version {supported}: upgrade deploy-flake (or pin the flake's deploy-flake input to the version of this binary)", supported = SCHEMA_VERSION)]
    SchemaTooNew { found: u64 },

    #[error("deployFlake has schemaVersion {found}, but this deploy-flake understands only version {supported}: update the flake's deploy-flake input", supported = SCHEMA_VERSION)]
    SchemaTooOld { found: u64 },

    #[error("deployFlake{path}: {detail}; it must be the output of deploy-flake's lib.mkDeployFlake (same version as this binary)")]
    Malformed { path: String, detail: String },

    #[error("{path}: {value} {problem}; fix it in the flake's deployFlake")]
    InvalidHost {
        /// `deployFlake.hosts.web1.hostname`
        path: String,
        /// The offending value, JSON-quoted.
        value: String,
        problem: String,
    },
}

// ---------------------------------------------------------------------------
// Loading

/// How long `nix eval` of the inventory may take before we give up.
pub const DEFAULT_EVAL_TIMEOUT: Duration = Duration::from_secs(300);

/// How many lines of Nix's stderr an evaluation error shows.
const STDERR_TAIL_LINES: usize = 20;

/// The argv of the one evaluation that reads the whole fleet.
pub fn eval_argv(flake: &str) -> Vec<String> {
    vec![
        "nix".into(),
        "eval".into(),
        "--json".into(),
        "--extra-experimental-features".into(),
        "nix-command flakes".into(),
        format!("{flake}#deployFlake"),
    ]
}

/// Evaluates `<flake>#deployFlake` and returns the validated inventory.
/// Never evaluates a NixOS configuration (that is `lib/`'s promise).
pub async fn load(flake: &str, timeout: Duration) -> Result<Inventory, InventoryError> {
    let argv = eval_argv(flake);
    let child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| InventoryError::NixNotFound { source })?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(source)) => return Err(InventoryError::NixNotFound { source }),
        Err(_) => return Err(InventoryError::Timeout { flake: flake.to_string(), after: timeout }),
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(classify_eval_failure(flake, &stderr));
    }
    match String::from_utf8(out.stdout) {
        Ok(stdout) => parse(&stdout),
        Err(e) => parse(&String::from_utf8_lossy(e.as_bytes())),
    }
}

/// Turns a failed `nix eval` into an error: a missing output gets the fix,
/// anything else the tail of Nix's own message.
pub fn classify_eval_failure(flake: &str, stderr: &str) -> InventoryError {
    if stderr.contains("does not provide attribute") && stderr.contains("'deployFlake'") {
        return InventoryError::NoDeployFlake { flake: flake.to_string() };
    }
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    InventoryError::Eval { flake: flake.to_string(), stderr_tail: lines[start..].join("\n") }
}

// ---------------------------------------------------------------------------
// Parsing and validation (pure)

/// Parses and validates the JSON of a `deployFlake` output.
pub fn parse(json: &str) -> Result<Inventory, InventoryError> {
    // Fast path: a well-formed current document deserializes in one pass.
    // Anything else takes the slow path below, which finds the exact fault.
    if let Ok(inventory) = serde_json::from_str::<Inventory>(json) {
        if inventory.schema_version == SCHEMA_VERSION {
            validate(&inventory)?;
            return Ok(inventory);
        }
    }
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|source| InventoryError::Json { source })?;
    let obj = value.as_object().ok_or_else(|| InventoryError::Malformed {
        path: String::new(),
        detail: "expected an attribute set".into(),
    })?;
    // The version first: a newer schema may well have fields we reject.
    let version = match obj.get("schemaVersion") {
        None => return Err(InventoryError::NoSchemaVersion),
        Some(v) => v.as_u64().ok_or_else(|| InventoryError::Malformed {
            path: ".schemaVersion".into(),
            detail: format!("expected an integer, got {v}"),
        })?,
    };
    if version > u64::from(SCHEMA_VERSION) {
        return Err(InventoryError::SchemaTooNew { found: version });
    }
    if version < u64::from(SCHEMA_VERSION) {
        return Err(InventoryError::SchemaTooOld { found: version });
    }
    if let Some(k) = obj.keys().find(|k| *k != "schemaVersion" && *k != "hosts") {
        return Err(InventoryError::Malformed {
            path: format!(".{k}"),
            detail: "unknown field".into(),
        });
    }
    let hosts_value = obj.get("hosts").ok_or_else(|| InventoryError::Malformed {
        path: ".hosts".into(),
        detail: "missing".into(),
    })?;
    let hosts_obj = hosts_value.as_object().ok_or_else(|| InventoryError::Malformed {
        path: ".hosts".into(),
        detail: "expected an attribute set of hosts".into(),
    })?;
    let mut hosts = BTreeMap::new();
    for (name, v) in hosts_obj {
        // One host at a time, so that a bad record names its host.
        let spec = HostSpec::deserialize(v).map_err(|e| InventoryError::Malformed {
            path: format!(".hosts.{}", attr_display(name)),
            detail: e.to_string(),
        })?;
        hosts.insert(name.clone(), spec);
    }
    let inventory = Inventory { schema_version: SCHEMA_VERSION, hosts };
    validate(&inventory)?;
    Ok(inventory)
}

/// Checks every host of an inventory (see [`validate_host`]).
pub fn validate(inventory: &Inventory) -> Result<(), InventoryError> {
    for (name, spec) in &inventory.hosts {
        validate_host(&format!("deployFlake.hosts.{}", attr_display(name)), spec)?;
    }
    Ok(())
}

/// Checks one host record; `path` names it in errors (e.g.
/// `deployFlake.hosts.web1`, or the destination of an ad hoc host).
pub fn validate_host(path: &str, spec: &HostSpec) -> Result<(), InventoryError> {
    // `value` as shown: strings JSON-quoted, numbers bare.
    let bad = |field: &str, value: String, problem: String| InventoryError::InvalidHost {
        path: format!("{path}.{field}"),
        value,
        problem,
    };
    if let Some(p) = host_problem(&spec.hostname) {
        return Err(bad(
            "hostname",
            quote(&spec.hostname),
            format!("is not a plausible host name: {p}"),
        ));
    }
    if let Some(p) = user_problem(&spec.ssh_user) {
        return Err(bad(
            "sshUser",
            quote(&spec.ssh_user),
            format!("is not a plausible user name: {p}"),
        ));
    }
    if spec.ssh_port == 0 {
        return Err(bad("sshPort", "0".into(), "is not a port: use 1..65535".into()));
    }
    if let Some(p) = configuration_problem(&spec.configuration) {
        return Err(bad("configuration", quote(&spec.configuration), p.into()));
    }
    if let Some(sc) = &spec.self_check {
        if let Some(p) = self_check_problem(sc) {
            return Err(bad("selfCheck", quote(sc), p.into()));
        }
    }
    if spec.sudo.is_empty() || spec.sudo.chars().any(char::is_control) {
        return Err(bad(
            "sudo",
            quote(&spec.sudo),
            "must be a non-empty command without control characters".into(),
        ));
    }
    for (i, c) in spec.health_checks.iter().enumerate() {
        let field = format!("healthChecks.{i}");
        match (&c.command, &c.http) {
            (Some(argv), None) if !argv.is_empty() => {}
            (None, Some(url))
                if url.starts_with("http://")
                    && !url.chars().any(|ch| ch.is_whitespace() || ch.is_control()) => {}
            _ => {
                return Err(bad(
                    &field,
                    quote(&c.description),
                    "needs exactly one of `command` (a non-empty argv) or `http` (an http:// URL)"
                        .into(),
                ))
            }
        }
        if c.period == 0 || c.timeout == 0 {
            return Err(bad(
                &field,
                quote(&c.description),
                "period and timeout must be at least 1 second".into(),
            ));
        }
    }
    for (i, opt) in spec.ssh_opts.iter().enumerate() {
        if opt.chars().any(char::is_control) {
            return Err(bad(
                &format!("sshOpts.{i}"),
                quote(opt),
                "contains a control character".into(),
            ));
        }
    }
    for phase in Phase::ALL {
        if spec.timeouts.get(phase) == 0 {
            return Err(bad(
                &format!("timeouts.{}", phase.timeout_key()),
                "0".into(),
                "is not a timeout: use a positive number of seconds".into(),
            ));
        }
    }
    Ok(())
}

/// Why `s` cannot be an ssh host name, or `None` when it is plausible.
pub fn host_problem(s: &str) -> Option<&'static str> {
    common_name_problem(s)
}

/// Why `s` cannot be an ssh user name, or `None` when it is plausible.
pub fn user_problem(s: &str) -> Option<&'static str> {
    common_name_problem(s).or_else(|| s.contains(':').then_some("contains ':'"))
}

fn common_name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("it is empty")
    } else if s.chars().any(char::is_control) {
        Some("contains a control character")
    } else if s.chars().any(char::is_whitespace) {
        Some("contains whitespace")
    } else if s.starts_with('-') {
        Some("starts with '-'")
    } else if s.contains('@') {
        Some("contains '@'")
    } else if s.contains('/') {
        Some("contains '/'")
    } else {
        None
    }
}

/// Why `s` cannot name a `nixosConfigurations` attribute. Anything else Nix
/// allows is kept: it is only ever passed as a quoted Nix attribute.
pub fn configuration_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("is empty: name a nixosConfigurations attribute")
    } else if s.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    }
}

/// Why `s` cannot be a self-check path inside the toplevel.
pub fn self_check_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("is empty: use null for auto-detection")
    } else if s.starts_with('/') {
        Some("is absolute: it must be a path inside the toplevel, e.g. \"bin/check\"")
    } else if s.split('/').any(|c| c == "..") {
        Some("contains '..': it must stay inside the toplevel")
    } else if s.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    }
}

/// Can `name` stand unquoted as a Nix attribute (`web1`, `_x'`, `web-1`)?
pub fn is_plain_nix_identifier(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '\'' | '-'))
}

/// `web1`, or `"my host"` when the name is not a plain Nix identifier
/// (JSON-quoted, as lib/ names paths in its errors).
pub fn attr_display(name: &str) -> String {
    if is_plain_nix_identifier(name) {
        name.to_string()
    } else {
        quote(name)
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}
