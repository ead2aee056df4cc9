//! The fleet inventory: `nix eval --json <flake>#deployFlake` parsed into
//! typed, validated records (schema version 1, as lib/ writes it).

mod document;
mod stream;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use crate::rules;
use document::Document;

/// The whole `deployFlake` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inventory {
    pub schema_version: u32,
    pub hosts: BTreeMap<String, HostSpec>,
    /// How a run over many hosts is staged (absent: every host at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::fleet::Settings>,
}

pub use crate::fleet::{
    BuildOn, CopyFrom, HealthCheck, HostSpec, KeySpec, Probe, Timeouts, UploadAt, SCHEMA_VERSION,
};

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

    /// A host record or the rollout breaks lib/rules.json; worded as lib/
    /// words it.
    #[error("{message}; fix it in the flake's deployFlake")]
    InvalidHost {
        /// `deployFlake.hosts.web1.sshPort: expected an integer between 1
        /// and 65535, got an integer (0)`
        message: String,
    },
}

// ---------------------------------------------------------------------------
// Loading

/// How long `nix eval` of the inventory may take before we give up.
pub const DEFAULT_EVAL_TIMEOUT: Duration = Duration::from_secs(300);

/// How many lines of Nix's stderr an evaluation error shows.
const STDERR_TAIL_LINES: usize = 20;

/// What the evaluation applies to `deployFlake`: lib's compact view of the
/// fleet when it has one (`mkDeployFlake` from this version on), else the
/// document itself (an older lib, or one written by hand). Either reads as
/// the same inventory.
pub const EVAL_APPLY: &str = "d: d.compact or d";

/// The argv of the one evaluation that reads the whole fleet.
pub fn eval_argv(flake: &str) -> Vec<String> {
    vec![
        "nix".into(),
        "eval".into(),
        "--json".into(),
        "--extra-experimental-features".into(),
        "nix-command flakes".into(),
        format!("{flake}#deployFlake"),
        "--apply".into(),
        EVAL_APPLY.into(),
    ]
}

/// Evaluates `<flake>#deployFlake` and returns the validated inventory.
/// Never evaluates a NixOS configuration (that is `lib/`'s promise).
///
/// What Nix prints is read on a thread of its own as it comes, so that
/// reading and checking the hosts overlaps their evaluation; it counts only
/// once `nix` has succeeded.
pub async fn load(flake: &str, timeout: Duration) -> Result<Inventory, InventoryError> {
    let argv = eval_argv(flake);
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| InventoryError::NixNotFound { source })?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        unreachable!("stdout and stderr are piped")
    };
    let stdout = stdout.into_owned_fd().map_err(|source| InventoryError::NixNotFound { source })?;
    let reading = tokio::task::spawn_blocking(move || stream::read(std::fs::File::from(stdout)));
    let finished = async {
        let mut err = Vec::new();
        let (status, _, read) = tokio::join!(child.wait(), stderr.read_to_end(&mut err), reading);
        (status, err, read.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())))
    };
    let (status, stderr, read) = match tokio::time::timeout(timeout, finished).await {
        Ok((Ok(status), stderr, read)) => (status, stderr, read),
        Ok((Err(source), ..)) => return Err(InventoryError::NixNotFound { source }),
        Err(_) => {
            let flake = crate::redact::flake_ref(flake);
            return Err(InventoryError::Timeout { flake, after: timeout });
        }
    };
    let stderr = String::from_utf8_lossy(&stderr);
    if !status.success() {
        return Err(classify_eval_failure(flake, &stderr));
    }
    // What Nix warned about (a dirty tree, an unknown setting, a deprecation)
    // is the run's to say.
    // Without the reference's credentials (`redact`).
    let shown = crate::redact::flake_ref(flake);
    for line in stderr.lines().filter(|l| crate::process::is_warning(l)) {
        tracing::warn!(
            "nix eval {shown}#deployFlake: {}",
            crate::redact::scrub(line.trim(), flake)
        );
    }
    read
}

/// Turns a failed `nix eval` into an error: a missing output gets the fix,
/// anything else the tail of Nix's own message. Both without the flake
/// reference's credentials.
pub fn classify_eval_failure(flake: &str, stderr: &str) -> InventoryError {
    let shown = crate::redact::flake_ref(flake);
    if stderr.contains("does not provide attribute") && stderr.contains("'deployFlake'") {
        return InventoryError::NoDeployFlake { flake: shown };
    }
    let stderr = crate::redact::scrub(stderr, flake);
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    InventoryError::Eval { flake: shown, stderr_tail: lines[start..].join("\n") }
}

// ---------------------------------------------------------------------------
// Parsing and validation (pure)

/// Parses and validates the JSON of a `deployFlake` output: the resolved
/// document, or lib's compact view of it (see [`EVAL_APPLY`]). Every host
/// is checked against lib/rules.json, and a fault is reported as lib/
/// reports it.
pub fn parse(json: &str) -> Result<Inventory, InventoryError> {
    match serde_json::from_str::<Document>(json) {
        Ok(doc) if doc.schema_version == SCHEMA_VERSION => finish(doc),
        _ => parse_generic(json),
    }
}

/// A document read in one pass, of the current version: its first fault
/// (a host's, then the rollout's), or the inventory.
fn finish(doc: Document) -> Result<Inventory, InventoryError> {
    if let Some(message) = doc.first_fault {
        return Err(InventoryError::InvalidHost { message });
    }
    check_rollout(doc.rollout.as_ref())?;
    Ok(Inventory { schema_version: doc.schema_version, hosts: doc.hosts, rollout: doc.rollout })
}

/// Checks a rollout serde has read, as the generic reading checks its JSON.
fn check_rollout(rollout: Option<&crate::fleet::Settings>) -> Result<(), InventoryError> {
    let Some(r) = rollout else { return Ok(()) };
    let v = serde_json::to_value(r).map_err(|e| InventoryError::Malformed {
        path: ".rollout".into(),
        detail: e.to_string(),
    })?;
    crate::rules::check_rollout("deployFlake.rollout", &v)
        .map_err(|message| InventoryError::InvalidHost { message })?;
    Ok(())
}

/// Reads any JSON, so that a wrong type, key or version gets its own
/// message (a compact view, expanded into the document it stands for).
fn parse_generic(json: &str) -> Result<Inventory, InventoryError> {
    let mut value: serde_json::Value =
        serde_json::from_str(json).map_err(|source| InventoryError::Json { source })?;
    let obj = value.as_object_mut().ok_or_else(|| InventoryError::Malformed {
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
    if obj.contains_key("defaults") {
        document::expand_compact(obj)
            .map_err(|(path, detail)| InventoryError::Malformed { path, detail })?;
    }
    if let Some(k) =
        obj.keys().find(|k| !["schemaVersion", "hosts", "rollout"].contains(&k.as_str()))
    {
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
        let path = format!("deployFlake.hosts.{}", attr_display(name));
        rules::check_host(&path, v).map_err(|message| InventoryError::InvalidHost { message })?;
        // The rules passed, so this reads; if not, the rules miss something.
        let spec = HostSpec::deserialize(v).map_err(|e| InventoryError::Malformed {
            path: format!(".hosts.{}", attr_display(name)),
            detail: e.to_string(),
        })?;
        hosts.insert(name.clone(), spec);
    }
    let rollout = match obj.get("rollout") {
        None => None,
        Some(v) => Some(
            crate::rules::check_rollout("deployFlake.rollout", v)
                .map_err(|message| InventoryError::InvalidHost { message })?,
        ),
    };
    Ok(Inventory { schema_version: SCHEMA_VERSION, hosts, rollout })
}

/// Checks every host of an inventory (see [`validate_host`]).
pub fn validate(inventory: &Inventory) -> Result<(), InventoryError> {
    for (name, spec) in &inventory.hosts {
        rules::check_named_spec(name, spec, &|_| false)
            .map_err(|message| InventoryError::InvalidHost { message })?;
    }
    check_rollout(inventory.rollout.as_ref())
}

/// Checks one host record against lib/rules.json; `path` names it in
/// errors (e.g. `deployFlake.hosts.web1`).
pub fn validate_host(path: &str, spec: &HostSpec) -> Result<(), InventoryError> {
    rules::check_spec(path, spec).map_err(|message| InventoryError::InvalidHost { message })
}

/// Can `name` stand unquoted as a Nix attribute (`web1`, `_x'`, `web-1`)?
pub use crate::rules::is_plain_nix_identifier;

/// `web1`, or `"my host"` when the name is not a plain Nix identifier
/// (quoted as lib/ quotes it in its errors).
pub fn attr_display(name: &str) -> String {
    if is_plain_nix_identifier(name) {
        name.to_string()
    } else {
        rules::nix_json_string(name)
    }
}
