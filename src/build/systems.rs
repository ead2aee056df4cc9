//! `--systems FILE`: systems built elsewhere (a CI job), deployed as they
//! are. The file is a JSON object from a host's attribute name, or a
//! configuration's name, to the toplevel's store path; a value may also be
//! an entry of `nix build --json` (`{ "outputs": { "out": PATH } }`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::rules;
use crate::select::Target;

/// Read `--systems FILE`: name -> store path, each path checked as lib/'s
/// `system` option is.
pub fn read_systems(file: &Path) -> Result<BTreeMap<String, String>, String> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("--systems {shown}: {e}"))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| {
        format!("--systems {shown}: not JSON ({e}); expected {{ \"NAME\": \"/nix/store/...\" }}")
    })?;
    let Value::Object(entries) = json else {
        return Err(format!(
            "--systems {shown}: expected a JSON object from host or configuration names to store paths"
        ));
    };
    let mut systems = BTreeMap::new();
    for (name, v) in entries {
        let path = match &v {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o
                .get("outputs")
                .and_then(|outs| outs.get("out"))
                .or_else(|| o.get("out"))
                .and_then(Value::as_str),
            _ => None,
        };
        let Some(path) = path else {
            return Err(format!("--systems {shown}: {name:?}: expected a store path, got {v}"));
        };
        if let Some(problem) = rules::string_problem("system", path) {
            return Err(format!("--systems {shown}: {name:?}: {path:?} {problem}"));
        }
        systems.insert(name, path.to_string());
    }
    Ok(systems)
}

/// Give each selected host its system from `systems` (by its name, else by
/// its configuration's). Every selected host must have one: `--systems`
/// deploys exactly what it lists.
pub fn apply_systems(
    systems: &BTreeMap<String, String>,
    targets: &mut [Target],
) -> Result<(), String> {
    let mut missing = Vec::new();
    for t in targets.iter_mut() {
        match systems.get(&t.name).or_else(|| systems.get(&t.spec.configuration)) {
            Some(path) => t.spec.system = Some(path.clone()),
            None => missing.push(t.name.clone()),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "--systems has no system for {} (by host or configuration name): add {} or leave {} out; \
         nothing was touched",
        missing.join(", "),
        if missing.len() == 1 { "it" } else { "them" },
        if missing.len() == 1 { "it" } else { "them" },
    ))
}
