//! Checking `deployFlake.rollout` as lib/rollout.nix checks it, with the
//! texts of lib/rules.json (`rollout`), so a fault reads the same from
//! `nix flake check`, `mkDeployFlake` and the tool.

use regex::Regex;
use serde_json::Value;

use super::{describe, rules, suggest};
use crate::fleet::{Settings, Size};

/// `rollout` of lib/rules.json.
fn rule(path: &[&str]) -> &'static Value {
    path.iter().fold(&rules().rollout, |v, k| &v[*k])
}

fn expected(path: &[&str]) -> &'static str {
    rule(path)["expected"].as_str().unwrap_or("?")
}

fn mismatch(what: &[&str], path: &str, v: &Value) -> String {
    format!("{path}: expected {}, got {}", expected(what), describe(v))
}

/// The whole-value regex of `key` of a rule.
fn matches(what: &[&str], key: &str, s: &str) -> bool {
    let re = rule(what)[key].as_str().unwrap_or("");
    Regex::new(&format!("^(?:{re})$")).is_ok_and(|r| r.is_match(s))
}

/// A count (from the rule's `min`) or a percentage.
fn size(what: &[&str], path: &str, v: &Value) -> Result<Size, String> {
    let min = rule(what)["min"].as_u64().unwrap_or(0);
    match v {
        Value::Number(n) if n.as_u64().is_some_and(|n| n >= min) => {
            Ok(Size::Count(n.as_u64().unwrap_or(0)))
        }
        Value::String(s) if matches(what, "percent", s) => {
            Size::parse(s).map_err(|_| mismatch(what, path, v))
        }
        _ => Err(mismatch(what, path, v)),
    }
}

const KEYS: [&str; 4] = ["batches", "canary", "maxFailures", "soak"];

/// Reads a resolved `deployFlake.rollout` (every key present); `path`
/// names it. The first fault, unknown keys first, as lib/ words it.
pub fn check_rollout(path: &str, v: &Value) -> Result<Settings, String> {
    let Some(obj) = v.as_object() else {
        return Err(format!("{path}: expected an attribute set, got {}", describe(v)));
    };
    // In Nix's order (sorted), so the first fault is the one lib/ names.
    if let Some(k) = obj.keys().filter(|k| !KEYS.contains(&k.as_str())).min() {
        return Err(format!(
            "{path}.{k}: unknown option{} (known options: {})",
            suggest(k, &KEYS),
            KEYS.join(", ")
        ));
    }
    if let Some(k) = KEYS.iter().find(|k| !obj.contains_key(**k)) {
        return Err(format!(
            "{path}.{k}: missing (a deployFlake must be fully resolved; mkDeployFlake fills in defaults)"
        ));
    }
    Ok(Settings {
        batches: batches(&format!("{path}.batches"), &obj["batches"])?,
        canary: canary(&format!("{path}.canary"), &obj["canary"])?,
        max_failures: size(&["maxFailures"], &format!("{path}.maxFailures"), &obj["maxFailures"])?,
        soak: soak(&format!("{path}.soak"), &obj["soak"])?,
    })
}

fn canary(path: &str, v: &Value) -> Result<Vec<String>, String> {
    let list = v.as_array().ok_or_else(|| mismatch(&["canary"], path, v))?;
    let what = ["canary", "selector"];
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        match e.as_str() {
            Some(s) if matches(&what, "require", s) => out.push(s.to_string()),
            _ => return Err(mismatch(&what, &format!("{path}.{i}"), e)),
        }
    }
    Ok(out)
}

fn batches(path: &str, v: &Value) -> Result<Vec<Size>, String> {
    let list = v.as_array().filter(|l| !l.is_empty());
    let list = list.ok_or_else(|| mismatch(&["batches"], path, v))?;
    let what = ["batches", "size"];
    list.iter().enumerate().map(|(i, e)| size(&what, &format!("{path}.{i}"), e)).collect()
}

fn soak(path: &str, v: &Value) -> Result<Option<u64>, String> {
    let (min, max) = (rule(&["soak"])["min"].as_u64(), rule(&["soak"])["max"].as_u64());
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_u64() {
            Some(s) if Some(s) >= min && Some(s) <= max => Ok(Some(s)),
            _ => Err(mismatch(&["soak"], path, v)),
        },
        _ => Err(mismatch(&["soak"], path, v)),
    }
}

/// The flake's default settings (`rollout.defaults` of lib/rules.json).
pub fn defaults() -> Settings {
    check_rollout("rollout.defaults", &rules().rollout["defaults"])
        .expect("lib/rules.json: rollout.defaults pass their own rules")
}

impl Default for Settings {
    /// `rollout.defaults` of lib/rules.json: every host at once, no soak.
    fn default() -> Settings {
        defaults()
    }
}
